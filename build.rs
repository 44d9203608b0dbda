//! Links the CNI plugin (`podnet`) as a static PIE where the C toolchain has glibc's static
//! libraries, and leaves the other programs as they are.
//!
//! The plugin is a short-lived process the runtime starts for every pod event, so its start is
//! part of every ADD and DEL: the dynamic loader (finding, mapping and relocating libc and
//! libgcc_s) costs about 0.35 ms of CPU a start on the machines we measured, a static binary
//! none of it, and it also runs wherever it is copied (flannel's plugin is static too).
//! `-C target-feature=+crt-static` would do this for every crate of the build (proc macros
//! included, which cannot be static); cargo has no per-binary flag for it. So the plugin alone
//! gets `-static-pie` and a search directory where the libraries rustc names for a dynamic
//! link (`-lc`, `-lgcc_s`, ...) are linker scripts naming the static archives instead. The
//! plugin resolves no names and loads nothing, so glibc's static-linking caveats (NSS, dlopen)
//! do not apply to it. Without the archives (or for another target) the plugin is linked
//! dynamically, as before; `PODNET_CNI_STATIC` tells the tests which it is.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PODNET_CNI_DYNAMIC");
    let static_ok = std::env::var_os("PODNET_CNI_DYNAMIC").is_none() && static_plugin();
    println!(
        "cargo:rustc-env=PODNET_CNI_STATIC={}",
        if static_ok { "1" } else { "0" }
    );
}

/// Sets up the static link of the `podnet` binary; `false` when this toolchain cannot.
fn static_plugin() -> bool {
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
    println!("cargo:rustc-link-arg-bin=podnet=-static-pie");
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
