//! Integration tests: real namespaces, real etcd, real kernel. They need root.
//!
//! One test binary with a module per area, so the whole library is linked once.

mod backend;
mod cluster;
mod cri;
mod drift;
mod dualstack;
mod firewall;
mod hostile;
mod kube;
mod lab;
mod lease;
mod ops;
mod outage;
mod packaging;
mod pods;
mod policy;
mod policy_nft;
mod support;
mod udp;
mod wireguard;
