//! nftables through the `nft` tool: one script is one atomic transaction (all of it applies or
//! none), and listings are read back as text or JSON. Runs in the calling process's namespace.

use std::io::Write;
use std::process::{Command, Stdio};

use super::KernelError;

mod watch;

pub use watch::{Commit, Commits, NftEvents, generation};

/// What `nft` printed, and the process id it ran as (the one nftables notifications name).
struct Ran {
    stdout: String,
    pid: u32,
}

fn nft(args: &[&str], stdin: Option<&str>) -> Result<String, KernelError> {
    run(args, stdin).map(|r| r.stdout)
}

fn run(args: &[&str], stdin: Option<&str>) -> Result<Ran, KernelError> {
    let op = format!("nft {}", args.join(" "));
    let mut cmd = Command::new("nft");
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            KernelError::Other(format!(
                "{op}: the nft tool is not installed (Debian package nftables)"
            ))
        } else {
            KernelError::io(op.clone(), e)
        }
    })?;
    let pid = child.id();
    if let Some(input) = stdin {
        let mut si = child.stdin.take().expect("piped stdin");
        si.write_all(input.as_bytes())
            .map_err(|e| KernelError::io(op.clone(), e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| KernelError::io(op.clone(), e))?;
    if !out.status.success() {
        return Err(KernelError::Other(format!(
            "{op}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(Ran {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        pid,
    })
}

/// Applies a script as one transaction.
pub fn apply(script: &str) -> Result<(), KernelError> {
    nft(&["-f", "-"], Some(script)).map(|_| ())
}

/// Applies a script as one transaction; returns the id of the process that committed it, which
/// its notifications carry (`Commit::pid`), so the caller can tell its own changes from others'.
pub fn apply_traced(script: &str) -> Result<u32, KernelError> {
    run(&["-f", "-"], Some(script)).map(|r| r.pid)
}

/// A table without counters or handles (stable between calls); `None` if it does not exist.
pub fn list_table(family: &str, table: &str) -> Result<Option<String>, KernelError> {
    match nft(&["-s", "list", "table", family, table], None) {
        Ok(s) => Ok(Some(s)),
        Err(KernelError::Other(m)) if m.contains("No such file or directory") => Ok(None),
        Err(e) => Err(e),
    }
}

/// A table with its counters, as nft's JSON; `None` if it does not exist.
pub fn list_table_json(
    family: &str,
    table: &str,
) -> Result<Option<serde_json::Value>, KernelError> {
    match nft(&["-j", "list", "table", family, table], None) {
        Ok(s) => serde_json::from_str(&s)
            .map(Some)
            .map_err(|e| KernelError::decode("nft -j list table", e.to_string())),
        Err(KernelError::Other(m)) if m.contains("No such file or directory") => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether a table exists (cheap: names only).
pub fn table_exists(family: &str, table: &str) -> Result<bool, KernelError> {
    let out = nft(&["list", "tables", family], None)?;
    let want = format!("table {family} {table}");
    Ok(out.lines().any(|l| l.trim() == want))
}

/// The whole ruleset as nft's JSON.
pub fn ruleset_json() -> Result<serde_json::Value, KernelError> {
    let s = nft(&["-j", "list", "ruleset"], None)?;
    if s.trim().is_empty() {
        return Ok(serde_json::json!({"nftables": []}));
    }
    serde_json::from_str(&s).map_err(|e| KernelError::decode("nft -j list ruleset", e.to_string()))
}

/// Deletes a table; returns whether it existed.
pub fn delete_table(family: &str, table: &str) -> Result<bool, KernelError> {
    match nft(&["delete", "table", family, table], None) {
        Ok(_) => Ok(true),
        Err(KernelError::Other(m)) if m.contains("No such file or directory") => Ok(false),
        Err(e) => Err(e),
    }
}
