//! `podnet-test-apiserver`: runs the test API server by hand, e.g. to point a client at it.
//!
//! ```text
//! podnet-test-apiserver [--listen 127.0.0.1:6443] [--dir DIR] [--token TOKEN=USER]... [--fixtures]
//! ```
//! With `--dir`, the server speaks HTTPS with a fresh test PKI written there, plus
//! `kubeconfig` (and `kubeconfig-<user>` per token). `--fixtures` loads the fixture nodes,
//! namespace, pod and network policy. It runs until killed.

use podnet_test_apiserver::{
    ApiServer, CaRef, Credentials, Pki, ServerConfig, fixtures, write_kubeconfig,
};
use std::path::PathBuf;
use std::process::ExitCode;

struct Args {
    listen: String,
    dir: Option<PathBuf>,
    tokens: Vec<(String, String)>,
    fixtures: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        listen: "127.0.0.1:6443".into(),
        dir: None,
        tokens: Vec::new(),
        fixtures: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--listen" => a.listen = value()?,
            "--dir" => a.dir = Some(PathBuf::from(value()?)),
            "--token" => {
                let v = value()?;
                let (t, u) = v.split_once('=').ok_or("--token takes TOKEN=USER")?;
                a.tokens.push((t.into(), u.into()));
            }
            "--fixtures" => a.fixtures = true,
            "-h" | "--help" => return Err("usage: podnet-test-apiserver [--listen ADDR] [--dir DIR] [--token TOKEN=USER]... [--fixtures]".into()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn run(a: Args) -> Result<(), String> {
    let listener =
        std::net::TcpListener::bind(&a.listen).map_err(|e| format!("bind {}: {e}", a.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let mut cfg = ServerConfig::default();
    for (t, u) in &a.tokens {
        cfg = cfg.with_token(t, u);
    }
    let pki = match &a.dir {
        Some(dir) => Some(Pki::generate(dir, &[addr.ip()]).map_err(|e| e.to_string())?),
        None => None,
    };
    if let Some(p) = &pki {
        cfg = cfg.with_tls(p.server_tls());
    }
    let server = ApiServer::start(listener, cfg).map_err(|e| e.to_string())?;
    if a.fixtures {
        for name in fixtures::ALL {
            let obj = fixtures::fixture(name).ok_or(format!("fixture {name}"))?;
            server
                .store()
                .create(obj)
                .map_err(|e| format!("fixture {name}: {e}"))?;
        }
    }
    if let (Some(dir), Some(p)) = (&a.dir, &pki) {
        let ca = CaRef::File(&p.ca_cert_path);
        write_kubeconfig(
            &dir.join("kubeconfig"),
            &server.url(),
            ca,
            &Credentials::None,
        )
        .map_err(|e| e.to_string())?;
        for (t, u) in &a.tokens {
            let path = dir.join(format!("kubeconfig-{u}").replace(':', "_"));
            write_kubeconfig(&path, &server.url(), ca, &Credentials::Token(t.clone()))
                .map_err(|e| e.to_string())?;
        }
        println!("kubeconfig: {}", dir.join("kubeconfig").display());
    }
    println!("serving {}", server.url());
    loop {
        std::thread::park();
    }
}

fn main() -> ExitCode {
    match parse_args().and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podnet-test-apiserver: {e}");
            ExitCode::FAILURE
        }
    }
}
