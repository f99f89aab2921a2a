//! Records the git commit the binary is built from, so every run.json can say which code ran,
//! and with the `tch` feature, where LibTorch is.
//!
//! Sets `DDEXP_GIT_COMMIT` (full hash) and `DDEXP_GIT_DIRTY` ("true"/"false": tracked files
//! differ from the commit) when the crate is built inside a git checkout with `git` on the PATH;
//! sets nothing otherwise (a crates.io tarball, no git), and run.json then records no commit.
//!
//! With `tch`, the LibTorch library folder that torch-sys linked against goes into the run path
//! of every binary of the package, so `ddexp` (and the tests) find LibTorch without
//! LD_LIBRARY_PATH. torch-sys reports the folder to crates that depend on it directly.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    // Without these, cargo would rerun the script on any package change but never on a commit.
    // HEAD moves on checkout, logs/HEAD grows on every commit, index changes on staging; src/
    // edits change the dirty flag. Only existing paths are listed: a missing one reruns always.
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=Cargo.toml");
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        for file in ["HEAD", "logs/HEAD", "index"] {
            let path = Path::new(&git_dir).join(file);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }

    if std::env::var_os("CARGO_FEATURE_TCH").is_some()
        && let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB")
    {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }

    if let Some(commit) = git(&["rev-parse", "HEAD"]) {
        println!("cargo:rustc-env=DDEXP_GIT_COMMIT={commit}");
        if let Some(status) = git(&["status", "--porcelain", "--untracked-files=no"]) {
            println!("cargo:rustc-env=DDEXP_GIT_DIRTY={}", !status.is_empty());
        }
    }
}
