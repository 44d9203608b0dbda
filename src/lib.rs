//! podnet: a pod network for Kubernetes, drop-in compatible with flannel.
//!
//! The map of modules and who owns what is in `docs/design.md`.

pub mod ctl;
pub mod kernel;
pub mod lab;
pub mod logging;
