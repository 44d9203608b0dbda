//! Small helpers every program shares: atomic file replacement and advisory locks (`files`),
//! Go-style case-insensitive JSON lookups (`json`), retry with backoff (`backoff`), and backing
//! off from another agent that keeps undoing podnet's objects (`contest`).
//!
//! Nothing here knows about pods, leases or the kernel.

pub mod backoff;
pub mod contest;
pub mod files;
pub mod json;
