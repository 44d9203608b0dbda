//! The running program's own image: giving back the pages of its relocation table.
//!
//! A position-independent executable carries a table of relocations (`.rela.dyn`: one entry
//! for every address in its data, 1 MB of podnetd's) that the dynamic loader reads once,
//! before `main`, and nothing reads again. Its pages stay mapped from the file, and counted in
//! the process's RSS, for as long as the process runs. `discard_relocations` unmaps them.
//!
//! Invariants, because unmapping the wrong pages of a private mapping can lose data:
//! - only whole pages inside the table are given back (its first and last page may hold
//!   other sections);
//! - and only when those pages lie inside a loadable segment that is neither writable nor
//!   larger in memory than in the file, in a program without text relocations (the one case
//!   where the loader writes to a read-only segment): such pages are never copied on write,
//!   so what `MADV_DONTNEED` drops is exactly the file's content, and a later read would map
//!   it again from the file. The relocated data (`RELRO`, the GOT) is in a writable segment
//!   and can never qualify.

use std::ops::Range;

use super::KernelError;

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PF_W: u32 = 2;
const DT_NULL: i64 = 0;
const DT_RELA: i64 = 7;
const DT_RELASZ: i64 = 8;
const DT_TEXTREL: i64 = 22;
const DT_FLAGS: i64 = 30;
const DF_TEXTREL: u64 = 4;

/// `Elf64_Dyn`: an entry of the dynamic section.
#[repr(C)]
#[derive(Clone, Copy)]
struct Dyn {
    tag: i64,
    val: u64,
}

/// A loadable segment of the image, as addresses in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    mem: Range<usize>,
    /// Writable, or with memory beyond the file's bytes (`.bss`).
    not_file_only: bool,
}

impl Segment {
    /// The segment a program header describes, loaded at `base`.
    fn from_phdr(base: usize, ph: &libc::Elf64_Phdr) -> Segment {
        let start = base.wrapping_add(ph.p_vaddr as usize);
        Segment {
            mem: start..start.wrapping_add(ph.p_memsz as usize),
            not_file_only: ph.p_flags & PF_W != 0 || ph.p_memsz != ph.p_filesz,
        }
    }
}

/// The whole pages of the relocation table that may be given back, from the program's dynamic
/// entries (`(tag, value)`) and load segments; `base` is the load address. `DT_RELA` is an
/// address relative to `base` in the file; the loader may have relocated it in place.
fn discardable(
    base: usize,
    dynamic: &[(i64, u64)],
    segments: &[Segment],
    page: usize,
) -> Option<Range<usize>> {
    let find = |tag| dynamic.iter().find(|(t, _)| *t == tag).map(|(_, v)| *v);
    if find(DT_TEXTREL).is_some() || find(DT_FLAGS).is_some_and(|f| f & DF_TEXTREL != 0) {
        return None;
    }
    let (rela, size) = (usize::try_from(find(DT_RELA)?).ok()?, find(DT_RELASZ)?);
    let start = if rela < base {
        base.checked_add(rela)?
    } else {
        rela
    };
    let end = start.checked_add(usize::try_from(size).ok()?)?;
    let first = start.checked_next_multiple_of(page)?;
    let last = end - end % page;
    if first >= last {
        return None;
    }
    segments
        .iter()
        .any(|s| !s.not_file_only && s.mem.start <= first && last <= s.mem.end)
        .then_some(first..last)
}

/// What `dl_iterate_phdr` says about the main program.
#[derive(Default)]
struct Image {
    base: usize,
    dynamic: Vec<(i64, u64)>,
    segments: Vec<Segment>,
}

unsafe extern "C" fn first_object(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: dl_iterate_phdr passes a valid info for the duration of the call, and `data` is
    // the `Image` `discard_relocations` lent it.
    let (info, image) = unsafe { (&*info, &mut *(data as *mut Image)) };
    image.base = info.dlpi_addr as usize;
    if info.dlpi_phdr.is_null() {
        return 1;
    }
    // SAFETY: dlpi_phdr (not null) points at dlpi_phnum program headers.
    let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum.into()) };
    for ph in phdrs {
        match ph.p_type {
            PT_LOAD => image.segments.push(Segment::from_phdr(image.base, ph)),
            PT_DYNAMIC => {
                let n = ph.p_memsz as usize / std::mem::size_of::<Dyn>();
                let entries = image.base.wrapping_add(ph.p_vaddr as usize) as *const Dyn;
                for i in 0..n {
                    // SAFETY: the dynamic section is mapped and holds n entries.
                    let d = unsafe { entries.add(i).read() };
                    if d.tag == DT_NULL {
                        break;
                    }
                    image.dynamic.push((d.tag, d.val));
                }
            }
            _ => {}
        }
    }
    1 // the main program only: dl_iterate_phdr(3) visits it first
}

/// Unmaps the whole pages of this program's relocation table; returns how many bytes were
/// given back (0 for an image without one, or one laid out otherwise than the invariants
/// above require).
pub fn discard_relocations() -> Result<usize, KernelError> {
    let mut image = Image::default();
    // SAFETY: the callback only reads what dl_iterate_phdr hands it and writes to `image`.
    unsafe {
        libc::dl_iterate_phdr(
            Some(first_object),
            &mut image as *mut Image as *mut libc::c_void,
        );
    }
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let Some(range) = discardable(image.base, &image.dynamic, &image.segments, page) else {
        return Ok(0);
    };
    let len = range.end - range.start;
    // SAFETY: the range is whole pages of a read-only, file-only segment of this program
    // (module invariants); dropping them loses nothing.
    let rc = unsafe { libc::madvise(range.start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
    if rc != 0 {
        return Err(KernelError::io(
            "give back the relocation table's pages",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 4096;

    fn text(start: usize, end: usize) -> Segment {
        Segment {
            mem: start..end,
            not_file_only: false,
        }
    }

    #[test]
    fn whole_pages_inside_the_table_of_a_read_only_segment() {
        let base = 0x5555_0000_0000;
        let segs = [text(base, base + 0x20_0000)];
        // Relative to the base, as in the file.
        let dynamic = [(DT_RELA, 0x1fd8), (DT_RELASZ, 0x10_0578), (5, 0x1234)];
        assert_eq!(
            discardable(base, &dynamic, &segs, PAGE),
            Some(base + 0x2000..base + 0x10_2000)
        );
        // Relocated in place by the loader: the same pages.
        let dynamic = [(DT_RELA, (base + 0x1fd8) as u64), (DT_RELASZ, 0x10_0578)];
        assert_eq!(
            discardable(base, &dynamic, &segs, PAGE),
            Some(base + 0x2000..base + 0x10_2000)
        );
    }

    #[test]
    fn nothing_outside_a_read_only_file_only_segment() {
        let base = 0x5555_0000_0000;
        let dynamic = [(DT_RELA, 0x1000), (DT_RELASZ, 0x4000)];
        let writable = Segment {
            mem: base..base + 0x10_0000,
            not_file_only: true,
        };
        assert_eq!(discardable(base, &dynamic, &[writable], PAGE), None);
        // Reaching past the read-only segment's end.
        assert_eq!(
            discardable(base, &dynamic, &[text(base, base + 0x3000)], PAGE),
            None
        );
        // No segments known at all.
        assert_eq!(discardable(base, &dynamic, &[], PAGE), None);
    }

    #[test]
    fn a_segment_is_file_only_when_read_only_and_all_from_the_file() {
        let ph = |flags, filesz, memsz| libc::Elf64_Phdr {
            p_type: PT_LOAD,
            p_flags: flags,
            p_offset: 0,
            p_vaddr: 0x1000,
            p_paddr: 0x1000,
            p_filesz: filesz,
            p_memsz: memsz,
            p_align: 0x1000,
        };
        let r = 4;
        let seg = Segment::from_phdr(0x5000_0000, &ph(r, 0x3000, 0x3000));
        assert_eq!(seg, text(0x5000_1000, 0x5000_4000));
        assert!(Segment::from_phdr(0, &ph(r | PF_W, 0x3000, 0x3000)).not_file_only);
        assert!(Segment::from_phdr(0, &ph(r, 0x3000, 0x4000)).not_file_only);
    }

    #[test]
    fn a_table_across_two_segments_or_with_text_relocations_is_left_alone() {
        let base = 0x5555_0000_0000;
        let dynamic = [(DT_RELA, 0x1000), (DT_RELASZ, 0x4000)];
        // The table starts in a writable segment and ends in a read-only one.
        let segs = [
            Segment {
                mem: base..base + 0x3000,
                not_file_only: true,
            },
            text(base + 0x3000, base + 0x10_0000),
        ];
        assert_eq!(discardable(base, &dynamic, &segs, PAGE), None);
        let segs = [text(base, base + 0x10_0000)];
        assert!(discardable(base, &dynamic, &segs, PAGE).is_some());
        let textrel = [(DT_RELA, 0x1000), (DT_RELASZ, 0x4000), (DT_TEXTREL, 0)];
        assert_eq!(discardable(base, &textrel, &segs, PAGE), None);
        let flagged = [
            (DT_RELA, 0x1000),
            (DT_RELASZ, 0x4000),
            (DT_FLAGS, DF_TEXTREL),
        ];
        assert_eq!(discardable(base, &flagged, &segs, PAGE), None);
    }

    #[test]
    fn small_missing_or_absurd_tables_give_back_nothing() {
        let base = 0x1000_0000;
        let segs = [text(base, base + 0x10_0000)];
        // Less than a whole page.
        let small = [(DT_RELA, 0x1fd8), (DT_RELASZ, 0x1000)];
        assert_eq!(discardable(base, &small, &segs, PAGE), None);
        // No table (a static executable, or one linked without relocations).
        assert_eq!(discardable(base, &[(DT_RELASZ, 0x4000)], &segs, PAGE), None);
        assert_eq!(discardable(base, &[(DT_RELA, 0x1000)], &segs, PAGE), None);
        // A size that would wrap around the address space.
        let wrap = [(DT_RELA, 0x1000), (DT_RELASZ, u64::MAX)];
        assert_eq!(discardable(base, &wrap, &segs, PAGE), None);
    }

    #[test]
    fn this_test_program_gives_back_its_table_and_keeps_running() {
        // The test binary is a PIE too: its table goes, and everything relocated still works
        // (a trait object call and a formatted string use relocated vtables and pointers).
        let given = discard_relocations().unwrap();
        assert!(
            given > 0,
            "a PIE has a relocation table of more than a page"
        );
        assert_eq!(given % PAGE, 0);
        let shown: Box<dyn std::fmt::Display> = Box::new(given);
        assert_eq!(format!("{shown}"), given.to_string());
        assert_eq!(
            discard_relocations().unwrap(),
            given,
            "the same pages again"
        );
    }
}
