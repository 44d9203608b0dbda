//! Fuzz properties for what podnet parses from input other machines (or other programs) wrote:
//! lease keys and values, the network config, the CNI config and environment, `subnet.env`,
//! Kubernetes Nodes and policy manifests. Each property says "any input: no panic, and what is
//! accepted keeps its invariants / round-trips". They run a bounded number of cases inside
//! `cargo test` (512 each; `PROPTEST_CASES=100000 cargo test --release --test fuzz` for a longer
//! hunt). The udp backend's packet functions are private and fuzzed in their own module.
//!
//! Generators mix three kinds of input: arbitrary text or bytes, soups of the characters a
//! format uses, and structured near-valid documents (a plausible skeleton, then mutated by
//! `support::mutate`: values replaced by random JSON, keys dropped or re-cased).

mod cni;
mod config;
mod kube;
mod lease;
mod manifest;
mod subnet_env;
mod support;
