//! Small helpers every program shares: atomic file replacement and advisory locks (`files`),
//! Go-style case-insensitive JSON lookups (`json`), and retry with backoff (`backoff`).
//!
//! Nothing here knows about pods, leases or the kernel.

pub mod backoff;
pub mod files;
pub mod json;
