//! podnetd's heap. glibc gives each allocating thread its own arena and keeps the pages freed
//! after a burst (the first pass over thousands of peers, a netlink dump) mapped; in an agent
//! that runs for months that is resident memory for nothing. podnetd's few threads rarely
//! allocate at the same moment, so one arena serves them all, and big passes hand their free
//! pages back.

/// Call before any thread is started.
///
/// Also fixes the size from which an allocation gets its own mapping at glibc's default,
/// 128 KiB. Left alone, glibc raises it each time such a block is freed (up to 32 MiB): after
/// the first netlink dump, the next big buffers (dumps, a full pass's list of changes) come
/// from the heap, between the peers' long-lived data, and their pages stay resident after
/// they are freed (`malloc_trim` can hand back only whole free pages).
pub fn limit_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator tuning; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Returns freed heap pages to the kernel.
pub fn release_free() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim is thread-safe and has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The heap's bytes in use by the program and held free by the allocator.
pub struct Heap {
    pub in_use: usize,
    pub free: usize,
}

/// The allocator's view of the heap (every arena and the mmapped blocks); glibc only.
pub fn heap() -> Option<Heap> {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallinfo2 only reads the allocator's counters.
        let i = unsafe { libc::mallinfo2() };
        Some(Heap {
            in_use: i.uordblks + i.hblkhd,
            free: i.fordblks,
        })
    }
    #[cfg(not(target_env = "gnu"))]
    None
}
