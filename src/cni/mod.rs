//! The CNI plugin (`podnet`, also installable as `flannel`).
//!
//! `handle` owns the protocol: it reads the `CNI_*` environment and the config on stdin,
//! negotiates the version, calls a verb in `plugin`, and renders the result or the error (with
//! the spec's code) for stdout. The verbs never touch the process environment or stdout, so
//! they are tested directly.

pub mod bridge;
pub mod conf;
pub mod ipam;
pub mod plugin;
pub mod records;
pub mod spec;
pub mod veth;

use conf::{Args, Command, NetConf};
use spec::{CniError, code};

/// What to print and how to exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub stdout: String,
    pub exit_code: i32,
}

fn fail(e: CniError, version: &str) -> Output {
    Output {
        stdout: e.to_json(version),
        exit_code: 1,
    }
}

/// The version to report errors in: the config's if it can be read, else the latest.
fn error_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(|c| c.as_str())
                .map(String::from)
        })
        .filter(|v| spec::SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| spec::LATEST.to_string())
}

/// Runs one invocation.
pub fn handle(env: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> Output {
    let ev = error_version(stdin);
    let args = match Args::from_env(env) {
        Ok(a) => a,
        Err(e) => return fail(e, &ev),
    };
    if args.command == Command::Version {
        return Output {
            stdout: plugin::version(stdin),
            exit_code: 0,
        };
    }
    let conf = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => return fail(e, &ev),
    };
    let v = conf.cni_version.as_str();
    let needs = |min: &str, verb: &str| -> Result<(), CniError> {
        if spec::at_least(v, min) {
            Ok(())
        } else {
            Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("config version does not allow {verb}"),
            )
            .with_details(format!(
                "{verb} needs cniVersion {min} or later; the config says {v}"
            )))
        }
    };
    let result = match args.command {
        Command::Add => plugin::add(&args, &conf).map(|r| r.render(v).to_string()),
        Command::Del => plugin::del(&args, &conf).map(|_| String::new()),
        Command::Check => needs("0.4.0", "CHECK")
            .and_then(|_| plugin::check(&args, &conf))
            .map(|_| String::new()),
        Command::Status => needs("1.1.0", "STATUS")
            .and_then(|_| plugin::status(&conf))
            .map(|_| String::new()),
        Command::Gc => needs("1.1.0", "GC")
            .and_then(|_| plugin::gc(&conf))
            .map(|_| String::new()),
        Command::Version => unreachable!("handled above"),
    };
    match result {
        Ok(stdout) => Output {
            stdout,
            exit_code: 0,
        },
        Err(e) => fail(e, v),
    }
}

/// What the plugin reads of its config in its first `read` (a runtime's config is a few KiB).
const STDIN_FIRST_READ: usize = 16 * 1024;

/// The plugin binary: process environment and stdin in, stdout and exit code out.
pub fn main() -> i32 {
    if std::env::var_os(plugin::REAP_ENV).is_some() {
        return match veth::reap(veth::REAP_DEBOUNCE) {
            Ok(()) => 0,
            Err(_) => 1,
        };
    }
    // Room for a config in one read (a growing buffer read it 32 bytes at first, doubling).
    let mut stdin = Vec::with_capacity(STDIN_FIRST_READ);
    if let Err(e) = std::io::Read::read_to_end(&mut std::io::stdin(), &mut stdin) {
        let err = CniError::new(code::IO, "cannot read the network config from stdin")
            .with_details(e.to_string());
        print!("{}", err.to_json(spec::LATEST));
        return 1;
    }
    let out = handle(&|k| std::env::var(k).ok(), &stdin);
    print!("{}", out.stdout);
    out.exit_code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(env: &[(&str, &str)], stdin: &str) -> Output {
        let m: std::collections::HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        handle(&|k| m.get(k).cloned(), stdin.as_bytes())
    }

    #[test]
    fn version_and_protocol_errors() {
        let o = run(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.0.0"}"#);
        assert_eq!(o.exit_code, 0);
        assert!(
            o.stdout
                .contains(r#""supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]"#)
        );
        let o = run(&[], r#"{"cniVersion":"0.4.0"}"#);
        assert_eq!(
            (o.exit_code, o.stdout.as_str()),
            (
                1,
                r#"{"cniVersion":"0.4.0","code":4,"msg":"required env variable CNI_COMMAND missing"}"#
            )
        );
        let add = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_NETNS", "/nonexistent"),
            ("CNI_IFNAME", "eth0"),
        ];
        let o = run(&add, "not json");
        assert!(o.stdout.contains(r#""code":6"#), "{}", o.stdout);
        let o = run(&add, r#"{"cniVersion":"2.0.0","name":"n"}"#);
        assert!(o.stdout.contains(r#""code":1"#) && o.stdout.contains("incompatible CNI versions"));
        let check = [
            ("CNI_COMMAND", "CHECK"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_NETNS", "/x"),
            ("CNI_IFNAME", "eth0"),
        ];
        let o = run(&check, r#"{"cniVersion":"0.3.1","name":"n"}"#);
        assert!(
            o.stdout.contains("config version does not allow CHECK"),
            "{}",
            o.stdout
        );
        let o = run(
            &[("CNI_COMMAND", "STATUS")],
            r#"{"cniVersion":"1.0.0","name":"n"}"#,
        );
        assert!(
            o.stdout.contains("config version does not allow STATUS"),
            "{}",
            o.stdout
        );
    }

    #[test]
    fn status_reports_a_missing_subnet_file_with_code_50() {
        let o = run(
            &[("CNI_COMMAND", "STATUS")],
            r#"{"cniVersion":"1.1.0","name":"n","subnetFile":"/nonexistent/subnet.env"}"#,
        );
        assert_eq!(o.exit_code, 1);
        assert!(o.stdout.contains(r#""code":50"#), "{}", o.stdout);
        assert!(
            o.stdout.contains("/nonexistent/subnet.env does not exist"),
            "{}",
            o.stdout
        );
    }
}
