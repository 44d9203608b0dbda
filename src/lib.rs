//! podnet: a pod network for Kubernetes, drop-in compatible with flannel.
//!
//! The map of modules and who owns what is in `docs/design.md`.

pub mod backend;
pub mod cni;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod firewall;
pub mod httpget;
pub mod kernel;
pub mod kubeapi;
pub mod lab;
pub mod lease;
pub mod logging;
pub mod owned;
pub mod policy;
pub mod status;
pub mod subnet_env;
pub mod util;
