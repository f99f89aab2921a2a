//! Running the `ddexp` binary from the CLI tests.
#![allow(dead_code)] // each test file uses a different subset of these helpers

use std::path::Path;
use std::process::{Command, Output};

/// `ddexp ARGS` run in `cwd`, to completion.
pub fn ddexp(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ddexp"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("ddexp runs")
}

/// stdout then stderr, for assertions and failure messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
