//! Links the CNI plugin (`podnet`) as a static executable where the C toolchain has glibc's
//! static libraries, and leaves the other programs as they are.
//!
//! The plugin is a short-lived process the runtime starts for every pod event, so its start is
//! part of every ADD and DEL: the dynamic loader (finding, mapping and relocating libc and
//! libgcc_s) costs about 0.35 ms of CPU a start on the machines we measured, a static binary
//! none of it, and it also runs wherever it is copied (flannel's plugin is static too).
//! `-C target-feature=+crt-static` would do this for every crate of the build (proc macros
//! included, which cannot be static); cargo has no per-binary flag for it. So the plugin alone
//! gets `-static` and a search directory where the libraries rustc names for a dynamic link
//! (`-lc`, `-lgcc_s`, ...) are linker scripts naming the static archives instead. The plugin
//! resolves no names and loads nothing, so glibc's static-linking caveats (NSS, dlopen) do not
//! apply to it.
//!
//! It is linked at a fixed address (`-no-pie`), as Go links the reference plugins and
//! flannel's: a static PIE relocates itself at every start (5 500 pointers, in pages it then
//! has to copy), about 0.1 ms (0.07–0.15) of each ADD and DEL on the VM we measured
//! (docs/benchmarks.md).
//! What that gives up is the randomised address of the plugin's own code and data; its stack,
//! heap and mappings are still randomised. `PODNET_CNI_PIE=1` links the static PIE instead.
//! Without the archives (or for another target) the plugin is linked dynamically, as before.
//! `PODNET_CNI_LINK` tells the tests which of the three it is.
//!
//! podnetd's code is laid out hot first where the linker can (see `symbol_order`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PODNET_CNI_DYNAMIC");
    println!("cargo:rerun-if-env-changed=PODNET_CNI_PIE");
    let pie = std::env::var("PODNET_CNI_PIE").as_deref() == Ok("1");
    let link = if std::env::var_os("PODNET_CNI_DYNAMIC").is_none() && static_plugin(pie) {
        if pie { "static-pie" } else { "static" }
    } else {
        "dynamic"
    };
    println!("cargo:rustc-env=PODNET_CNI_LINK={link}");
    symbol_order();
}

/// The functions podnetd runs, in front of the rest of its code.
///
/// The kernel maps a program's code in 64 KiB around every page it first runs (fault-around),
/// and podnetd's 12 MB of code is laid out crate by crate: the ~3 MB it ever runs is spread
/// so that nearly all of it ends up mapped, and counted in its RSS, for the process's whole
/// life (7–8 MB at 5 000 peers). `packaging/symbol-order/podnetd.txt` lists what it runs
/// (`scripts/symbol-order.sh` records it under valgrind), and the linker puts those
/// functions first. A name the list lacks (code added since it was recorded) is laid out as
/// before; a name that no longer exists is ignored. So a stale list costs memory, never
/// correctness. (podnet's crate is one codegen unit in release builds, `Cargo.toml`, so that
/// its functions' names do not change with every edit of the code.)
///
/// Only a linker that takes the list is given it (`links_with_order`: rust-lld, the default of
/// official Rust builds for this target since 1.90, does; GNU ld does not).
/// `PODNET_SYMBOL_ORDER=0` turns it off.
fn symbol_order() {
    for var in [
        "PODNET_SYMBOL_ORDER",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let (Some(dir), Some(out)) = (
        std::env::var_os("CARGO_MANIFEST_DIR"),
        std::env::var_os("OUT_DIR"),
    ) else {
        return;
    };
    let list = PathBuf::from(dir).join("packaging/symbol-order/podnetd.txt");
    println!("cargo:rerun-if-changed={}", list.display());
    if std::env::var("PODNET_SYMBOL_ORDER").as_deref() == Ok("0")
        || !list.exists()
        || !links_with_order(Path::new(&out))
    {
        return;
    }
    // One argument each (`-Xlinker`), so a comma in the path cannot split it.
    for arg in [
        format!("--symbol-ordering-file={}", list.display()),
        "--no-warn-symbol-ordering".to_string(),
    ] {
        println!("cargo:rustc-link-arg-bin=podnetd=-Xlinker");
        println!("cargo:rustc-link-arg-bin=podnetd={arg}");
    }
}

/// Whether this build's linker takes a symbol ordering file: a program of nothing linked the
/// way this build links (its target, `RUSTFLAGS` and linker) with an empty one.
fn links_with_order(out: &Path) -> bool {
    let src = out.join("order-probe.rs");
    if std::fs::write(&src, "fn main() {}\n").is_err() {
        return false;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let mut cmd = Command::new(rustc);
    cmd.arg("--crate-name=order_probe")
        .arg("--edition=2021")
        .arg("-o")
        .arg(out.join("order-probe"))
        .args([
            "-C",
            "link-arg=-Xlinker",
            "-C",
            "link-arg=--symbol-ordering-file=/dev/null",
        ])
        .args([
            "-C",
            "link-arg=-Xlinker",
            "-C",
            "link-arg=--no-warn-symbol-ordering",
        ]);
    if let Ok(target) = std::env::var("TARGET") {
        cmd.arg("--target").arg(target);
    }
    if let Ok(flags) = std::env::var("CARGO_ENCODED_RUSTFLAGS") {
        cmd.args(flags.split('\x1f').filter(|f| !f.is_empty()));
    }
    if let Some(linker) = std::env::var_os("RUSTC_LINKER") {
        let mut arg = std::ffi::OsString::from("linker=");
        arg.push(linker);
        cmd.arg("-C").arg(arg);
    }
    cmd.arg(&src)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Sets up the static link of the `podnet` binary (a static PIE with `pie`); `false` when this
/// toolchain cannot.
fn static_plugin(pie: bool) -> bool {
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    if target != host || !target.ends_with("-linux-gnu") {
        return false;
    }
    let (Some(libc), Some(gcc_eh), Some(gcc)) = (
        archive("libc.a"),
        archive("libgcc_eh.a"),
        archive("libgcc.a"),
    ) else {
        return false;
    };
    let Some(out) = std::env::var_os("OUT_DIR") else {
        return false;
    };
    let shim = PathBuf::from(out).join("static-shim");
    let libdir = libc.parent().map(Path::to_path_buf).unwrap_or_default();
    let scripts = [
        (
            "libc.so",
            format!(
                "GROUP({} {} {})",
                libc.display(),
                gcc_eh.display(),
                gcc.display()
            ),
        ),
        (
            "libgcc_s.so",
            format!("INPUT({} {})", gcc_eh.display(), gcc.display()),
        ),
    ];
    if std::fs::create_dir_all(&shim).is_err() {
        return false;
    }
    for (name, text) in scripts {
        if std::fs::write(shim.join(name), text).is_err() {
            return false;
        }
    }
    // glibc 2.34+ folded these into libc; their archives are empty stubs, if present at all.
    for lib in ["m", "pthread", "rt", "dl", "util"] {
        let a = libdir.join(format!("lib{lib}.a"));
        let text = if a.exists() {
            format!("INPUT({})", a.display())
        } else {
            format!("INPUT({})", libc.display())
        };
        if std::fs::write(shim.join(format!("lib{lib}.so")), text).is_err() {
            return false;
        }
    }
    // rustc asks for a PIE (`-pie`); the later `-no-pie` takes it back.
    let kind: &[&str] = if pie {
        &["-static-pie"]
    } else {
        &["-static", "-no-pie"]
    };
    for arg in kind {
        println!("cargo:rustc-link-arg-bin=podnet={arg}");
    }
    println!("cargo:rustc-link-arg-bin=podnet=-L{}", shim.display());
    true
}

/// The C compiler's path for a static archive, if it has one.
fn archive(name: &str) -> Option<PathBuf> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(cc)
        .arg(format!("-print-file-name={name}"))
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    // An unknown file is printed back as given, without a directory.
    (path.is_absolute() && path.exists()).then_some(path)
}
