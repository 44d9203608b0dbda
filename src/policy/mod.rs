//! Built-in Kubernetes NetworkPolicy (networking.k8s.io/v1): the pure part of the pipeline.
//!
//! ```text
//! sources (API watch, manifest directory)
//!   └─> manifest: text (YAML/JSON, several documents, v1 List) -> k8s-openapi objects
//!         └─> convert: objects -> model, validated as the API server would
//!               └─> model::Cluster: namespaces, pods, nodes, policies (with lookups)
//!                     ├─> eval: "may A reach B on proto/port?" with the reason (the oracle)
//!                     └─> compile: per local pod, isolation and allow rules over named
//!                           address sets (the IR)
//!                           └─> render: nftables text, whole or as one update transaction
//! ```
//!
//! Nothing here does I/O: the sources and the engine that applies the rendering live in
//! `daemon::policy`. `cases` holds
//! the upstream e2e suite's cases as data, used by the tests here and by lab tests later.
//!
//! Semantics follow the Kubernetes documentation page on network policies and the upstream e2e
//! suite (`test/e2e/network/netpol/`); where upstream leaves something undefined the choice is
//! written down in the module that makes it (loopback, node traffic and host-network pods in
//! `eval`).

pub mod cases;
pub mod cidr;
pub mod compile;
pub mod convert;
pub mod eval;
pub mod manifest;
pub mod model;
pub mod render;
pub mod shadow;
