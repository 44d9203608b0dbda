//! `podnetctl`: the operator's tool.

pub mod cluster;
pub mod demo;
pub mod doctor;
pub mod lab;
pub mod node;
pub mod policy;
pub mod status;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "podnetctl",
    version,
    about = "Operate a podnet cluster, or run one on this machine (lab)"
)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// A multi-node cluster in network namespaces on this machine.
    #[command(subcommand)]
    Lab(lab::LabCmd),
    /// The network config in etcd.
    #[command(subcommand)]
    Config(cluster::ConfigCmd),
    /// List the subnet leases: subnet, public IP, backend, time left, reserved.
    Leases(cluster::LeasesArgs),
    /// This node's lease, backend, peers and how each is reached, and drift from the kernel.
    Status(status::StatusArgs),
    /// Which network policies isolate a pod and what they allow.
    Policy(policy::PolicyArgs),
    /// Check this node for the usual misconfigurations, with a fix for each.
    Doctor(doctor::DoctorArgs),
    /// Remove podnet's routes, VXLAN devices and nftables table from this node.
    Teardown(node::TeardownArgs),
    /// Install the CNI plugin and its config atomically (for the DaemonSet's init container).
    InstallCni(node::InstallCniArgs),
}

/// Runs `podnetctl` and returns the process exit code.
pub fn main() -> i32 {
    crate::logging::init(0);
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Lab(lab::LabCmd::Demo(args)) => demo::run(args),
        Cmd::Lab(cmd) => lab::run(cmd).map_err(anyhow::Error::from),
        Cmd::Config(cmd) => cluster::config(cmd),
        Cmd::Leases(args) => cluster::leases(args),
        Cmd::Status(args) => status::run(args),
        Cmd::Doctor(args) => doctor::run(args),
        Cmd::Policy(args) => policy::run(args),
        Cmd::Teardown(args) => node::teardown(args),
        Cmd::InstallCni(args) => node::install_cni(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("podnetctl: {e:#}");
            1
        }
    }
}
