//! Running the `ddexp` binary from the CLI tests, and reading what its runs leave.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use ddexp::checkpoint::tensor_file;
use ddexp::results::{EvalRow, TrainRow, ValRow, read_rows};

/// The `ddexp` binary under test, for a command a test configures itself.
pub fn command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ddexp"))
}

/// `ddexp ARGS` run in `cwd`, to completion.
pub fn ddexp(args: &[&str], cwd: &Path) -> Output {
    command()
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("ddexp runs")
}

/// `ddexp run e.ron` in `dir`, killed with SIGKILL once a line of its log starts with
/// `line` (e.g. `iter 18:`), as a crash or a scheduler would stop it.
pub fn run_killed_at(dir: &Path, line: &str) {
    let mut child = command()
        .args(["run", "e.ron"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    for logged in stderr.lines() {
        if logged.unwrap().starts_with(line) {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// stdout then stderr, for assertions and failure messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every tensor of a safetensors file, as raw bytes.
pub fn tensors(path: &Path) -> BTreeMap<String, Vec<u8>> {
    tensor_file::read(path)
        .unwrap()
        .0
        .into_iter()
        .map(|(name, data)| (name, data.as_bytes().to_vec()))
        .collect()
}

/// Rows without the columns that measure time.
pub fn train_rows(run: &Path) -> Vec<TrainRow> {
    read_rows::<TrainRow>(&run.join("train.csv"))
        .unwrap()
        .into_iter()
        .map(|r| TrainRow {
            step_ms: 0.0,
            tokens_per_s: 0.0,
            ..r
        })
        .collect()
}

/// Rows without the evaluation time.
pub fn val_rows(run: &Path) -> Vec<ValRow> {
    read_rows::<ValRow>(&run.join("val.csv"))
        .unwrap()
        .into_iter()
        .map(|r| ValRow { eval_ms: 0.0, ..r })
        .collect()
}

/// Rows without the timestamp.
pub fn eval_rows(run: &Path) -> Vec<EvalRow> {
    read_rows::<EvalRow>(&run.join("eval.csv"))
        .unwrap()
        .into_iter()
        .map(|r| EvalRow {
            timestamp: String::new(),
            ..r
        })
        .collect()
}
