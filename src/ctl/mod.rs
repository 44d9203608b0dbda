//! `podnetctl`: the operator's tool.

pub mod cluster;
pub mod lab;

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
}

/// Runs `podnetctl` and returns the process exit code.
pub fn main() -> i32 {
    crate::logging::init(0);
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Lab(cmd) => lab::run(cmd).map_err(anyhow::Error::from),
        Cmd::Config(cmd) => cluster::config(cmd),
        Cmd::Leases(args) => cluster::leases(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("podnetctl: {e:#}");
            1
        }
    }
}
