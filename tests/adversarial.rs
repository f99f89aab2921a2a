//! Adversarial inputs through the binary: each case is something a careless or hostile user
//! can do, and each asserts the exit status, that the message names the problem, and that
//! nothing was written or lost. The six groups follow the kinds of failure they guard
//! against: silent wrong results, panics, runaway allocation, slow stops, collisions and
//! silent skips, unclear messages.
//!
//! `DDEXP_BIN=<path to another ddexp> cargo test --test adversarial` runs the table against
//! another binary (each command then runs under `ulimit -v 4 GiB`, so a binary without the
//! memory check aborts instead of taking the machine's memory).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ddexp::checkpoint::tensor_file;

// ---------------------------------------------------------------------------------------
// Running the binary

/// The binary under test, and whether it is another one than this build's.
fn binary() -> (PathBuf, bool) {
    match std::env::var_os("DDEXP_BIN") {
        Some(bin) => (PathBuf::from(bin), true),
        None => (PathBuf::from(env!("CARGO_BIN_EXE_ddexp")), false),
    }
}

/// `ddexp args` in `dir`; another binary runs with its address space capped at 4 GiB.
fn command(dir: &Path, args: &[&str]) -> Command {
    let (bin, other) = binary();
    let mut cmd = if other {
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg("ulimit -v 4194304; exec \"$0\" \"$@\"")
            .arg(&bin);
        sh
    } else {
        Command::new(&bin)
    };
    cmd.args(args).current_dir(dir).stdin(Stdio::null());
    cmd
}

/// How a command ended.
#[derive(Debug)]
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    secs: f64,
}

impl Ran {
    fn text(&self) -> String {
        format!(
            "exit {:?} after {:.1} s\n--- stdout\n{}\n--- stderr\n{}",
            self.code,
            self.secs,
            clip(&self.stdout),
            clip(&self.stderr)
        )
    }

    /// Refused with an error (exit 1, or 2 for a command-line error), not a crash, and the
    /// message names the problem.
    fn refused(&self, needles: &[&str]) {
        assert!(
            matches!(self.code, Some(1) | Some(2)),
            "expected a refusal (exit 1 or 2):\n{}",
            self.text()
        );
        assert!(!self.stderr.contains("panicked"), "{}", self.text());
        for needle in needles {
            assert!(
                self.stderr.contains(needle),
                "the message lacks `{needle}`:\n{}",
                self.text()
            );
        }
    }

    fn succeeded(&self) {
        assert_eq!(self.code, Some(0), "{}", self.text());
        assert!(!self.stderr.contains("panicked"), "{}", self.text());
    }
}

fn clip(s: &str) -> String {
    if s.len() <= 4000 {
        return s.to_string();
    }
    let mut end = 4000;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

/// Runs a spawned child to the end, killing it after `limit`.
fn finish(mut child: Child, started: Instant, limit: Duration) -> Ran {
    let out = child.stdout.take();
    let err = child.stderr.take();
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let out = read(out.map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let err = read(err.map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ran {
        code,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        secs: started.elapsed().as_secs_f64(),
    }
}

/// `ddexp args` in `dir`, to the end (at most two minutes).
fn ddexp(dir: &Path, args: &[&str]) -> Ran {
    let started = Instant::now();
    let child = command(dir, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ddexp starts");
    finish(child, started, Duration::from_secs(120))
}

// ---------------------------------------------------------------------------------------
// Fixtures

/// A DiT small enough to train in a fraction of a second.
fn tiny(name: &str) -> String {
    format!(
        r#"(
    name: "{name}",
    seed: 3,
    network: (n_embed: 32, n_heads: 2, n_blocks: 1, n_cond: 16, dropout: 0.0),
    dataset: Synthetic(seq_len: 16, train_tokens: 20000, eval_tokens: 2000),
    train: (batch_size: 4, grad_accum: 1, max_iters: 6, warmup_iters: 2, log_interval: 2,
            eval_interval: 3, eval_iters: 2),
    eval: (kl_batches: 2, recon_batches: 1, batch_size: 4),
)
"#
    )
}

fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, text).unwrap();
}

/// The run folders under `<dir>/results/<name>/`.
fn runs(dir: &Path, name: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir.join("results").join(name)) else {
        return vec![];
    };
    let mut runs: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    runs.sort();
    runs
}

/// A completed tiny run in `dir` (experiment `tiny`), trained by the binary under test.
fn trained(dir: &Path) -> PathBuf {
    write(&dir.join("tiny.ron"), &tiny("tiny"));
    ddexp(dir, &["run", "tiny.ron"]).succeeded();
    runs(dir, "tiny").pop().expect("a run folder")
}

/// A completed run made to look stopped (run.json `interrupted`), so `--resume` takes it.
fn stopped(dir: &Path) -> PathBuf {
    let run = trained(dir);
    let info = run.join("run.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&info).unwrap()).unwrap();
    json["status"] = "interrupted".into();
    std::fs::write(&info, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    run
}

/// Every file below `dir` with its contents, to check that nothing changed.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| (e.path().to_path_buf(), std::fs::read(e.path()).unwrap()))
        .collect()
}

fn assert_unchanged(before: &BTreeMap<PathBuf, Vec<u8>>, dir: &Path, ran: &Ran) {
    let after = snapshot(dir);
    let changed: Vec<&PathBuf> = before
        .keys()
        .chain(after.keys())
        .filter(|p| before.get(*p) != after.get(*p))
        .collect();
    assert!(
        changed.is_empty(),
        "files changed: {changed:?}\n{}",
        ran.text()
    );
}

/// Edits the tensors and metadata of a checkpoint in place.
fn edit_checkpoint(
    path: &Path,
    edit: impl FnOnce(&mut BTreeMap<String, burn::tensor::TensorData>, &mut BTreeMap<String, String>),
) {
    let (mut tensors, mut meta) = tensor_file::read_with_metadata(path).unwrap();
    edit(&mut tensors.0, &mut meta);
    tensor_file::write(path, &tensors, meta).unwrap();
}

fn latest(run: &Path) -> PathBuf {
    run.join("checkpoints").join("latest.safetensors")
}

/// The nanoDD fixture checkpoint.
fn nanodd_ckpt() -> PathBuf {
    common::fixtures::fixture_cases()
        .into_iter()
        .find(|case| common::fixtures::case_name(case) == "tiny_text8")
        .expect("the tiny_text8 fixture")
        .join("ckpt.pt")
}

/// A copy of a torch zip checkpoint with entries dropped or replaced by `edit` (None drops).
fn rewrite_zip(src: &Path, dst: &Path, edit: impl Fn(&str, Vec<u8>) -> Option<Vec<u8>>) {
    use std::io::Read;
    let mut archive = zip::ZipArchive::new(std::fs::File::open(src).unwrap()).unwrap();
    let mut writer = zip::ZipWriter::new(std::fs::File::create(dst).unwrap());
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).unwrap();
        let name = entry.name().to_string();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        if let Some(data) = edit(&name, data) {
            writer.start_file(name, options).unwrap();
            writer.write_all(&data).unwrap();
        }
    }
    writer.finish().unwrap();
}

/// The fixture with its pickle edited.
fn edited_pickle(dst: &Path, edit: impl Fn(&mut Vec<u8>)) {
    rewrite_zip(&nanodd_ckpt(), dst, |name, mut data| {
        if name.ends_with("data.pkl") {
            edit(&mut data);
        }
        Some(data)
    });
}

/// Past a memo opcode (BINPUT or LONG_BINPUT) at `at`, if there is one.
fn skip_put(d: &[u8], at: usize) -> usize {
    match d[at] {
        b'q' => at + 2,
        b'r' => at + 5,
        _ => at,
    }
}

fn rfind(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .rposition(|w| w == needle)
        .expect("pattern in the fixture pickle")
}

/// `[[[ … ]]]` nested `depth` deep.
fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

#[cfg(unix)]
fn symlink(target: impl AsRef<Path>, link: impl AsRef<Path>) {
    if let Some(parent) = link.as_ref().parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::os::unix::fs::symlink(target, link).unwrap();
}

// ---------------------------------------------------------------------------------------
// 1. Silent wrong results

#[test]
fn import_refuses_a_tensor_whose_storage_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("missing.pt");
    rewrite_zip(&nanodd_ckpt(), &ckpt, |name, data| {
        (!name.ends_with("/data/3")).then_some(data)
    });
    let ran = ddexp(
        dir.path(),
        &["import", "nanodd", "missing.pt", "--out", "m"],
    );
    ran.refused(&["missing.pt is damaged", "data/3", "missing from the zip"]);
    assert!(!dir.path().join("m").exists());
}

#[test]
fn import_refuses_a_storage_offset_past_its_storage() {
    let dir = tempfile::tempdir().unwrap();
    edited_pickle(&dir.path().join("offset.pt"), |d| {
        // BINPERSID, offset 0, shape (64,): the last such tensor is an EMA weight.
        let at = rfind(d, b"QK\x00K@\x85");
        d[at + 2] = 100;
    });
    let ran = ddexp(dir.path(), &["import", "nanodd", "offset.pt", "--out", "m"]);
    ran.refused(&[
        "offset.pt is damaged",
        "offset 100",
        "the storage holds 256",
    ]);
    assert!(!dir.path().join("m").exists());
}

#[test]
fn import_refuses_a_strided_view() {
    let dir = tempfile::tempdir().unwrap();
    edited_pickle(&dir.path().join("view.pt"), |d| {
        // A 64 × 64 weight: shape, BINPUT, stride (64, 1) becomes (1, 64), a transpose.
        let at = skip_put(d, rfind(d, b"QK\x00K@K@\x86") + 8);
        assert_eq!(&d[at..at + 5], b"K@K\x01\x86");
        d[at..at + 5].copy_from_slice(b"K\x01K@\x86");
    });
    let ran = ddexp(dir.path(), &["import", "nanodd", "view.pt", "--out", "m"]);
    ran.refused(&["view.pt is damaged", "strided view"]);
    assert!(!dir.path().join("m").exists());
}

#[test]
fn eval_kl_batches_near_u64_max_are_refused_not_wrapped() {
    let dir = tempfile::tempdir().unwrap();
    let run = trained(dir.path());
    let before = snapshot(&run);
    let run_arg = run.to_str().unwrap();
    let ran = ddexp(
        dir.path(),
        &["eval", run_arg, "--kl-batches", "18446744073709551615"],
    );
    ran.refused(&["--kl-batches", "1..=10000000"]);
    assert_unchanged(&before, &run, &ran);
}

#[test]
fn eval_recon_batches_that_wrap_the_sum_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = trained(dir.path());
    let before = snapshot(&run);
    let run_arg = run.to_str().unwrap();
    let ran = ddexp(
        dir.path(),
        &[
            "eval",
            run_arg,
            "--kl-batches",
            "1",
            "--recon-batches",
            "18446744073709551615",
        ],
    );
    ran.refused(&["--recon-batches", "1..=10000000"]);
    assert_unchanged(&before, &run, &ran);
}

#[test]
fn an_experiment_with_kl_batches_near_u64_max_never_runs() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("tiny.ron"), &tiny("tiny"));
    let ran = ddexp(
        dir.path(),
        &[
            "run",
            "tiny.ron",
            "--set",
            "eval.kl_batches=1",
            "--set",
            "eval.recon_batches=18446744073709551615",
        ],
    );
    ran.refused(&["eval.recon_batches", "must be at most 10000000"]);
    assert!(!dir.path().join("results").exists());
}

#[test]
fn eval_refuses_non_finite_ema_weights() {
    let dir = tempfile::tempdir().unwrap();
    let run = trained(dir.path());
    edit_checkpoint(&latest(&run), |t, _| {
        let w = t.get_mut("ema.net.norm_final.weight").unwrap();
        *w = burn::tensor::TensorData::new(vec![f32::NAN; 32], [32]);
    });
    let before = snapshot(&run);
    let ran = ddexp(dir.path(), &["eval", run.to_str().unwrap()]);
    ran.refused(&["NaN or infinite", "net.norm_final.weight"]);
    assert_unchanged(&before, &run, &ran);
}

#[test]
fn sample_refuses_non_finite_ema_weights() {
    let dir = tempfile::tempdir().unwrap();
    let run = trained(dir.path());
    edit_checkpoint(&latest(&run), |t, _| {
        let w = t.get_mut("ema.net.vocab_embed.weight").unwrap();
        *w = burn::tensor::TensorData::new(vec![f32::INFINITY; 28 * 32], [28, 32]);
    });
    let before = snapshot(&run);
    let ran = ddexp(
        dir.path(),
        &["sample", run.to_str().unwrap(), "--steps", "5"],
    );
    ran.refused(&["NaN or infinite", "net.vocab_embed.weight"]);
    assert_unchanged(&before, &run, &ran);
    assert!(!run.join("samples.txt").exists());
}

#[test]
fn resume_refuses_a_checkpoint_beyond_max_iters() {
    let dir = tempfile::tempdir().unwrap();
    let run = stopped(dir.path());
    edit_checkpoint(&latest(&run), |_, meta| {
        meta.insert("iteration".into(), "600".into());
    });
    let before = snapshot(&run);
    let ran = ddexp(dir.path(), &["run", "--resume", run.to_str().unwrap()]);
    ran.refused(&["iteration 600", "beyond the experiment's max_iters (6)"]);
    assert_unchanged(&before, &run, &ran);
}

#[test]
fn resume_refuses_an_iteration_behind_its_weights() {
    let dir = tempfile::tempdir().unwrap();
    let run = stopped(dir.path());
    edit_checkpoint(&latest(&run), |_, meta| {
        meta.insert("iteration".into(), "2".into());
    });
    let before = snapshot(&run);
    let ran = ddexp(dir.path(), &["run", "--resume", run.to_str().unwrap()]);
    ran.refused(&["iteration 2 but optimizer_steps 6", "counters disagree"]);
    assert_unchanged(&before, &run, &ran);
}

#[test]
fn eval_refuses_a_checkpoint_beyond_max_iters() {
    let dir = tempfile::tempdir().unwrap();
    let run = trained(dir.path());
    edit_checkpoint(&latest(&run), |_, meta| {
        meta.insert("iteration".into(), "600".into());
    });
    let before = snapshot(&run);
    let ran = ddexp(dir.path(), &["eval", run.to_str().unwrap()]);
    ran.refused(&["iteration 600", "beyond its experiment's max_iters (6)"]);
    assert_unchanged(&before, &run, &ran);
}

#[test]
fn bench_warmup_near_u64_max_is_refused_not_nan() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("tiny.ron"), &tiny("tiny"));
    let ran = ddexp(
        dir.path(),
        &["bench", "tiny.ron", "--warmup", "18446744073709551615"],
    );
    ran.refused(&["--warmup", "0..=1000000"]);
    assert!(!ran.stdout.contains("NaN"));
}

// ---------------------------------------------------------------------------------------
// 2. Panics

#[test]
fn a_deeply_nested_file_is_an_error_not_a_stack_overflow() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("deep.ron"), &nested(10_000));
    let ran = ddexp(dir.path(), &["validate", "deep.ron"]);
    ran.refused(&["deep.ron:1:65", "nested more than 64 levels"]);
}

#[test]
fn a_deeply_nested_set_value_is_an_error_not_a_stack_overflow() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("tiny.ron"), &tiny("tiny"));
    let set = format!("seed={}", nested(10_000));
    let ran = ddexp(dir.path(), &["run", "tiny.ron", "--set", &set]);
    ran.refused(&["--set seed=[[[", "nested more than 64 levels"]);
    assert!(!dir.path().join("results").exists());
}

#[test]
fn a_deeply_nested_file_in_a_sweep_folder_stops_the_sweep_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("sw/good.ron"), &tiny("good"));
    write(&dir.path().join("sw/deep.ron"), &nested(10_000));
    let ran = ddexp(dir.path(), &["sweep", "sw"]);
    ran.refused(&[
        "deep.ron:1:65",
        "nested more than 64 levels",
        "nothing was run",
    ]);
    assert!(!dir.path().join("results").exists());
}

#[test]
fn training_goes_on_when_its_output_pipe_closes() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("tiny.ron"), &tiny("tiny"));
    let (bin, other) = binary();
    let limit = if other { "ulimit -v 4194304; " } else { "" };
    let script = format!("{limit}'{}' run tiny.ron 2>&1 | head -1", bin.display());
    let started = Instant::now();
    let child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ran = finish(child, started, Duration::from_secs(120));
    let run = runs(dir.path(), "tiny").pop().expect("a run folder");
    let info = std::fs::read_to_string(run.join("run.json")).unwrap();
    assert!(
        info.contains("\"status\": \"completed\""),
        "{info}\n{}",
        ran.text()
    );
    let evals = std::fs::read_to_string(run.join("eval.csv")).unwrap();
    assert_eq!(
        evals.lines().count(),
        3,
        "a header and two splits:\n{evals}"
    );
}

/// `ddexp args` with its stdout closed before it writes anything.
fn with_stdout_closed(dir: &Path, args: &[&str]) -> Ran {
    let started = Instant::now();
    let mut child = command(dir, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    finish(child, started, Duration::from_secs(120))
}

#[test]
fn validate_survives_a_closed_stdout() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..20 {
        write(&dir.path().join(format!("e/x{i}.ron")), &tiny("x"));
    }
    let ran = with_stdout_closed(dir.path(), &["validate", "e"]);
    ran.succeeded();
}

#[test]
fn eval_keeps_its_rows_when_stdout_closes() {
    let dir = tempfile::tempdir().unwrap();
    let run = trained(dir.path());
    let rows = |run: &Path| {
        std::fs::read_to_string(run.join("eval.csv"))
            .unwrap()
            .lines()
            .count()
    };
    let before = rows(&run);
    let ran = with_stdout_closed(dir.path(), &["eval", run.to_str().unwrap(), "--json"]);
    ran.succeeded();
    assert_eq!(rows(&run), before + 2, "{}", ran.text());
}

#[test]
fn huge_eval_iters_are_refused_not_a_capacity_overflow() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("tiny.ron"), &tiny("tiny"));
    let ran = ddexp(
        dir.path(),
        &[
            "run",
            "tiny.ron",
            "--set",
            "train.eval_iters=18446744073709551615",
        ],
    );
    ran.refused(&["train.eval_iters", "must be at most 1000000"]);
    assert!(!dir.path().join("results").exists());
}

#[test]
fn a_huge_eval_batch_size_flag_is_refused_not_a_capacity_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let run = trained(dir.path());
    let before = snapshot(&run);
    let ran = ddexp(
        dir.path(),
        &[
            "eval",
            run.to_str().unwrap(),
            "--batch-size",
            "18446744073709551615",
        ],
    );
    ran.refused(&["--batch-size", "1..=65536"]);
    assert_unchanged(&before, &run, &ran);
}

#[test]
fn a_crafted_moment_shape_is_refused_before_the_resume() {
    let dir = tempfile::tempdir().unwrap();
    let run = stopped(dir.path());
    edit_checkpoint(&latest(&run), |t, _| {
        t.insert(
            "optim.m.vocab_embed.weight".into(),
            burn::tensor::TensorData::new(Vec::<f32>::new(), [1usize << 31, 1usize << 31, 0]),
        );
    });
    let before = snapshot(&run);
    let ran = ddexp(dir.path(), &["run", "--resume", run.to_str().unwrap()]);
    ran.refused(&["m.vocab_embed.weight", "[2147483648, 2147483648, 0]"]);
    assert_unchanged(&before, &run, &ran);
}

#[test]
fn a_crafted_weight_shape_is_refused_before_the_resume() {
    let dir = tempfile::tempdir().unwrap();
    let run = stopped(dir.path());
    edit_checkpoint(&latest(&run), |t, _| {
        t.insert(
            "model.net.blocks.0.attn_qkv.weight".into(),
            burn::tensor::TensorData::new(Vec::<f32>::new(), [1usize << 31, 1usize << 31, 0]),
        );
    });
    let before = snapshot(&run);
    let ran = ddexp(dir.path(), &["run", "--resume", run.to_str().unwrap()]);
    ran.refused(&["blocks.0.attn_qkv.weight", "do not fit the experiment"]);
    assert_unchanged(&before, &run, &ran);
}

#[test]
fn thousands_of_devices_are_refused_before_any_thread_starts() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("tiny.ron"), &tiny("tiny"));
    let devices: Vec<String> = (0..2000).map(|i| i.to_string()).collect();
    let set = format!("topology.devices=[{}]", devices.join(","));
    let ran = ddexp(dir.path(), &["run", "tiny.ron", "--set", &set]);
    ran.refused(&["topology.devices", "takes at most 64 entries"]);
    assert!(!dir.path().join("results").exists());
}

// ---------------------------------------------------------------------------------------
// 3. Runaway allocation

#[test]
fn a_width_of_10_to_the_8_is_refused_by_validation() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("tiny.ron"), &tiny("tiny"));
    let ran = ddexp(
        dir.path(),
        &[
            "run",
            "tiny.ron",
            "--set",
            "network=(n_embed: 100000000, n_heads: 1, n_blocks: 1, n_cond: 16)",
        ],
    );
    ran.refused(&["network.n_embed", "must be at most 65536"]);
    assert!(!dir.path().join("results").exists());
}

#[test]
fn a_network_too_big_for_the_machine_is_refused_before_the_run_folder() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("tiny.ron"), &tiny("tiny"));
    let ran = ddexp(
        dir.path(),
        &[
            "run",
            "tiny.ron",
            "--set",
            "network=(n_embed: 65536, n_heads: 1024, n_blocks: 64, n_cond: 64)",
        ],
    );
    ran.refused(&["needs ≈", "TiB, this machine has", "--force"]);
    assert!(!dir.path().join("results").exists());
}

#[test]
fn a_batch_too_big_for_the_machine_is_refused_before_the_run_folder() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("tiny.ron"), &tiny("tiny"));
    let ran = ddexp(
        dir.path(),
        &[
            "run",
            "tiny.ron",
            "--set",
            "train.batch_size=65536",
            "--set",
            "dataset=Synthetic(seq_len: 1024, train_tokens: 20000, eval_tokens: 4000)",
        ],
    );
    ran.refused(&["needs ≈", "this machine has", "activations"]);
    assert!(!dir.path().join("results").exists());
}

#[test]
fn bench_refuses_a_batch_too_big_for_the_machine() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("tiny.ron"), &tiny("tiny"));
    let ran = ddexp(
        dir.path(),
        &[
            "bench",
            "tiny.ron",
            "--set",
            "train.batch_size=65536",
            "--set",
            "dataset=Synthetic(seq_len: 1024, train_tokens: 20000, eval_tokens: 4000)",
        ],
    );
    ran.refused(&["needs ≈", "this machine has"]);
}

#[test]
fn an_eval_batch_too_big_is_refused_before_training_not_at_the_final_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("tiny.ron"), &tiny("tiny"));
    let ran = ddexp(
        dir.path(),
        &[
            "run",
            "tiny.ron",
            "--set",
            "eval.batch_size=65536",
            "--set",
            "dataset=Synthetic(seq_len: 4096, train_tokens: 20000, eval_tokens: 10000)",
        ],
    );
    ran.refused(&[
        "needs ≈",
        "the final evaluation's batches of 65536 sequences",
    ]);
    assert!(!dir.path().join("results").exists());
}

#[test]
fn a_trillion_diffusion_steps_are_refused_by_validation() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("tiny.ron"), &tiny("tiny"));
    let ran = ddexp(
        dir.path(),
        &[
            "run",
            "tiny.ron",
            "--set",
            "model=D3pmAbsorbing(timesteps: 1000000000000)",
        ],
    );
    ran.refused(&["timesteps", "must be at most 1000000"]);
    assert!(!dir.path().join("results").exists());
}

#[test]
fn a_synthetic_corpus_of_10_to_the_11_tokens_is_refused_by_validation() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("tiny.ron"), &tiny("tiny"));
    let ran = ddexp(
        dir.path(),
        &[
            "run",
            "tiny.ron",
            "--set",
            "dataset=Synthetic(seq_len: 16, train_tokens: 100000000000)",
        ],
    );
    ran.refused(&["dataset.train_tokens", "must be at most 1000000000"]);
    assert!(!dir.path().join("results").exists());
}

#[test]
fn sample_batch_of_100000_is_refused_with_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let run = trained(dir.path());
    let ran = ddexp(
        dir.path(),
        &["sample", run.to_str().unwrap(), "--batch", "100000"],
    );
    ran.refused(&["--batch", "1..=65536"]);
    assert!(!run.join("samples.txt").exists());
}

#[test]
fn sample_seq_len_of_10_to_the_8_is_refused_with_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let run = trained(dir.path());
    let ran = ddexp(
        dir.path(),
        &["sample", run.to_str().unwrap(), "--seq-len", "100000000"],
    );
    ran.refused(&["--seq-len", "1..=1048576"]);
    assert!(!run.join("samples.txt").exists());
}

#[test]
fn sampling_too_much_for_the_machine_is_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let run = trained(dir.path());
    let ran = ddexp(
        dir.path(),
        &[
            "sample",
            run.to_str().unwrap(),
            "--batch",
            "65536",
            "--seq-len",
            "100000",
            "--steps",
            "2",
        ],
    );
    ran.refused(&["sampling 65536 × 100000 tokens needs ≈", "this machine has"]);
    assert!(!run.join("samples.txt").exists());
}

#[test]
fn import_refuses_two_billion_steps_before_building_their_schedule() {
    let dir = tempfile::tempdir().unwrap();
    edited_pickle(&dir.path().join("steps.pt"), |d| {
        // model_args["T"] = 1000 (BININT2) becomes 2e9 (BININT).
        let at = skip_put(d, rfind(d, b"X\x01\x00\x00\x00T") + 6);
        assert_eq!(&d[at..at + 3], b"M\xe8\x03");
        let mut value = vec![b'J'];
        value.extend_from_slice(&2_000_000_000i32.to_le_bytes());
        d.splice(at..at + 3, value);
    });
    let ran = ddexp(dir.path(), &["import", "nanodd", "steps.pt", "--out", "m"]);
    ran.refused(&["timesteps", "must be at most 1000000"]);
    assert!(!dir.path().join("m").exists());
}

// ---------------------------------------------------------------------------------------
// 4. Stops that take too long

/// Starts a run whose validation lasts far longer than the test, signals it once the
/// validation of iteration 3 has started, and returns how it ended and how long the stop took.
#[cfg(unix)]
fn stop_during_validation(signal: nix::sys::signal::Signal) -> (tempfile::TempDir, Ran, f64) {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("tiny.ron"), &tiny("tiny"));
    let started = Instant::now();
    let mut child = command(
        dir.path(),
        &["run", "tiny.ron", "--set", "train.eval_iters=1000000"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = vec![];
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap_or_default();
            if line.starts_with("iter 2:") {
                let _ = tx.send(());
            }
            lines.push(line);
        }
        lines.join("\n")
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("training reaches iteration 2");
    // Iteration 3 takes milliseconds; its validation then runs for minutes.
    std::thread::sleep(Duration::from_millis(500));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, signal).unwrap();
    let signalled = Instant::now();
    let mut ran = finish(child, started, started.elapsed() + Duration::from_secs(20));
    let stop_secs = signalled.elapsed().as_secs_f64();
    ran.stderr = reader.join().unwrap();
    (dir, ran, stop_secs)
}

#[cfg(unix)]
fn assert_stopped_in_validation(dir: &Path, ran: &Ran, stop_secs: f64) {
    assert_eq!(ran.code, Some(130), "{}", ran.text());
    // Between two validation batches: well under a second on an idle machine; the bound
    // leaves room for a loaded one.
    assert!(stop_secs < 10.0, "stopped after {stop_secs:.1} s");
    assert!(
        ran.stderr
            .contains("validation at iteration 3 interrupted; checkpoint saved"),
        "{}",
        ran.text()
    );
    let run = runs(dir, "tiny").pop().unwrap();
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(info["status"], "interrupted");
    assert_eq!(info["checkpoint_iter"], 3, "the step is not lost");
    assert!(latest(&run).is_file());
}

#[cfg(unix)]
#[test]
fn sigterm_during_a_validation_stops_between_batches_with_a_checkpoint() {
    let (dir, ran, secs) = stop_during_validation(nix::sys::signal::Signal::SIGTERM);
    assert_stopped_in_validation(dir.path(), &ran, secs);
}

#[cfg(unix)]
#[test]
fn ctrl_c_during_a_validation_stops_between_batches_with_a_checkpoint() {
    let (dir, ran, secs) = stop_during_validation(nix::sys::signal::Signal::SIGINT);
    assert_stopped_in_validation(dir.path(), &ran, secs);
}

#[cfg(unix)]
#[test]
fn sigterm_during_a_long_accumulated_step_stops_between_micro_batches() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("tiny.ron"), &tiny("tiny"));
    let started = Instant::now();
    // 20 000 micro-batches make one optimiser step last far longer than the test.
    let child = command(
        dir.path(),
        &["run", "tiny.ron", "--set", "train.grad_accum=20000"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let signalled = Instant::now();
    let ran = finish(child, started, started.elapsed() + Duration::from_secs(20));
    let stop_secs = signalled.elapsed().as_secs_f64();
    assert_eq!(ran.code, Some(130), "{}", ran.text());
    assert!(stop_secs < 10.0, "stopped after {stop_secs:.1} s");
    let run = runs(dir.path(), "tiny").pop().unwrap();
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(info["status"], "interrupted", "{}", ran.text());
    assert_eq!(
        info["checkpoint_iter"], 0,
        "the last completed step is kept"
    );
}

#[cfg(unix)]
#[test]
fn a_run_stopped_in_validation_validates_that_step_when_resumed() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("tiny.ron"), &tiny("tiny"));
    let set = "train.eval_iters=400";
    let started = Instant::now();
    let mut child = command(dir.path(), &["run", "tiny.ron", "--set", set])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = vec![];
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap_or_default();
            if line.starts_with("iter 2:") {
                let _ = tx.send(());
            }
            lines.push(line);
        }
        lines.join("\n")
    });
    rx.recv_timeout(Duration::from_secs(60)).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut ran = finish(child, started, Duration::from_secs(60));
    ran.stderr = reader.join().unwrap();
    assert!(
        ran.stderr.contains("validation at iteration 3 interrupted"),
        "{}",
        ran.text()
    );
    let run = runs(dir.path(), "tiny").pop().unwrap();
    ddexp(dir.path(), &["run", "--resume", run.to_str().unwrap()]).succeeded();
    let val = std::fs::read_to_string(run.join("val.csv")).unwrap();
    let iters: Vec<&str> = val
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(iters, ["3", "6"], "{val}");
}

// ---------------------------------------------------------------------------------------
// 5. Collisions and silent skips

#[test]
fn two_sweep_folders_of_one_name_never_share_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("a/swc/m.ron"), &tiny("from-a"));
    write(&dir.path().join("b/swc/m.ron"), &tiny("from-b"));
    ddexp(dir.path(), &["sweep", "a/swc"]).succeeded();
    let results = dir.path().join("results/sweeps/swc");
    let before = snapshot(&results);
    let ran = ddexp(dir.path(), &["sweep", "b/swc"]);
    ran.refused(&[
        "another sweep folder named `swc`",
        "Rename this sweep folder",
    ]);
    assert_unchanged(&before, &results, &ran);
    assert!(runs(dir.path(), "from-b").is_empty());
}

#[test]
fn report_out_refuses_a_sweeps_own_folder() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("swc/m.ron"), &tiny("m"));
    ddexp(dir.path(), &["sweep", "swc"]).succeeded();
    let results = dir.path().join("results/sweeps/swc");
    let before = snapshot(&results);
    let ran = ddexp(
        dir.path(),
        &[
            "report",
            "results/sweeps/swc",
            "--out",
            "results/sweeps/swc",
        ],
    );
    ran.refused(&["is a sweep's results folder", "would overwrite"]);
    assert_unchanged(&before, &results, &ran);
}

#[test]
fn report_out_refuses_a_run_folder() {
    let dir = tempfile::tempdir().unwrap();
    let run = trained(dir.path());
    let before = snapshot(&run);
    let ran = ddexp(
        dir.path(),
        &[
            "report",
            run.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ],
    );
    ran.refused(&["is a run folder", "would overwrite"]);
    assert_unchanged(&before, &run, &ran);
}

#[test]
fn an_experiment_named_report_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("report.ron"), &tiny("report"));
    let ran = ddexp(dir.path(), &["run", "report.ron"]);
    ran.refused(&[
        "`name`",
        "`report` is the folder ddexp keeps its own files in",
    ]);
    assert!(!dir.path().join("results").exists());
}

#[test]
fn an_experiment_named_sweeps_in_any_case_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("s.ron"), &tiny("Sweeps"));
    let ran = ddexp(dir.path(), &["validate", "s.ron"]);
    ran.refused(&["`sweeps` is the folder ddexp keeps its own files in"]);
}

#[cfg(unix)]
#[test]
fn data_prepare_text_reads_symlinked_files() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("src/a.txt"),
        &"the cat sat on the mat. ".repeat(400),
    );
    write(
        &dir.path().join("elsewhere/b.txt"),
        &"a dog ran in the fog. ".repeat(400),
    );
    symlink("../elsewhere/b.txt", dir.path().join("src/b.txt"));
    let ran = ddexp(
        dir.path(),
        &[
            "data",
            "prepare",
            "text",
            "--from",
            "src",
            "--tokenizer",
            "char",
            "--root",
            "d",
        ],
    );
    ran.succeeded();
    // `g` is only in the linked file.
    let meta = std::fs::read_to_string(dir.path().join("d/meta.json")).unwrap();
    assert!(meta.contains("\"g\""), "the linked file is read:\n{meta}");
}

#[cfg(unix)]
#[test]
fn data_prepare_text_names_a_symlink_loop() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("src/a.txt"),
        &"the cat sat on the mat. ".repeat(400),
    );
    symlink("..", dir.path().join("src/up"));
    let ran = ddexp(
        dir.path(),
        &[
            "data",
            "prepare",
            "text",
            "--from",
            "src",
            "--tokenizer",
            "char",
            "--root",
            "d",
        ],
    );
    ran.refused(&["loop", "src/up"]);
    assert!(!dir.path().join("d").exists());
}

#[cfg(unix)]
#[test]
fn validate_reads_symlinked_experiment_files() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("e/good.ron"), &tiny("good"));
    write(&dir.path().join("other/bad.ron"), "(name: \"bad\")");
    symlink("../other/bad.ron", dir.path().join("e/linked.ron"));
    let ran = ddexp(dir.path(), &["validate", "e"]);
    ran.refused(&["e/linked.ron", "missing required field `dataset`"]);
}

#[cfg(unix)]
#[test]
fn validate_walks_symlinked_folders() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("e/good.ron"), &tiny("good"));
    write(&dir.path().join("other/bad.ron"), "(name: \"bad\")");
    symlink("../other", dir.path().join("e/sub"));
    let ran = ddexp(dir.path(), &["validate", "e"]);
    ran.refused(&["e/sub/bad.ron", "missing required field `dataset`"]);
}

#[cfg(unix)]
#[test]
fn validate_names_a_dangling_symlink() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("e/good.ron"), &tiny("good"));
    symlink("../nowhere.ron", dir.path().join("e/gone.ron"));
    let ran = ddexp(dir.path(), &["validate", "e"]);
    ran.refused(&["e/gone.ron"]);
}

#[cfg(unix)]
#[test]
fn a_sweep_counts_its_symlinked_members() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("sw/a.ron"), &tiny("a"));
    write(&dir.path().join("other/b.ron"), &tiny("b"));
    symlink("../other/b.ron", dir.path().join("sw/b.ron"));
    let ran = ddexp(dir.path(), &["sweep", "sw", "--dry-run"]);
    ran.succeeded();
    assert!(ran.stdout.contains("2 members"), "{}", ran.text());
}

// ---------------------------------------------------------------------------------------
// 6. Unclear messages

#[test]
fn a_byte_order_mark_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("bom.ron"),
        &format!("\u{feff}{}", tiny("bom")),
    );
    let ran = ddexp(dir.path(), &["validate", "bom.ron"]);
    ran.succeeded();
    assert!(ran.stdout.contains("ok      bom.ron"), "{}", ran.text());
}

#[test]
fn an_invisible_character_is_named_by_its_code_point() {
    let dir = tempfile::tempdir().unwrap();
    let text = tiny("zw").replace("seed: 3", "seed: \u{200b}3");
    write(&dir.path().join("zw.ron"), &text);
    let ran = ddexp(dir.path(), &["validate", "zw.ron"]);
    ran.refused(&["zw.ron:3:11", "zero-width space (U+200B)"]);
}

#[test]
fn a_120_kb_set_value_gives_a_short_message() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("tiny.ron"), &tiny("tiny"));
    let set = format!("seed=[{}]", "1, ".repeat(40_000));
    assert!(set.len() > 120_000);
    let ran = ddexp(dir.path(), &["validate", "tiny.ron", "--set", &set]);
    ran.refused(&["`seed`", "wrong type"]);
    assert!(
        ran.stderr.len() < 4_000,
        "{} bytes of message",
        ran.stderr.len()
    );
}

#[test]
fn a_thousand_wrong_values_give_a_short_message() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("tiny.ron"), &tiny("tiny"));
    let set = format!("eval.splits=[{}]", vec!["Tset"; 1000].join(", "));
    let ran = ddexp(dir.path(), &["validate", "tiny.ron", "--set", &set]);
    ran.refused(&["eval.splits", "and 980 more like these"]);
    assert!(
        ran.stderr.len() < 20_000,
        "{} bytes of message",
        ran.stderr.len()
    );
}

#[test]
fn an_experiment_file_of_megabytes_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = tiny("big");
    text.push_str(&format!("// {}\n", "x".repeat(2 << 20)));
    write(&dir.path().join("big.ron"), &text);
    let ran = ddexp(dir.path(), &["validate", "big.ron"]);
    ran.refused(&["big.ron", "at most 1048576"]);
}

#[test]
fn a_grid_of_millions_of_members_is_refused_unexpanded() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("g/base.ron"), &tiny("g"));
    let axis: Vec<String> = (1..=40).map(|i| i.to_string()).collect();
    let axis = axis.join(", ");
    write(
        &dir.path().join("g/sweep.ron"),
        &format!(
            "(base: \"base.ron\", grid: {{\"seed\": [{axis}], \"train.eval_iters\": [{axis}], \
             \"eval.kl_batches\": [{axis}], \"eval.recon_batches\": [{axis}]}})"
        ),
    );
    let ran = ddexp(dir.path(), &["sweep", "g", "--dry-run"]);
    ran.refused(&["40 × 40 × 40 × 40 members", "at most 10000"]);
}

#[test]
fn import_of_a_folder_says_which_file_to_give() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("run");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::copy(nanodd_ckpt(), folder.join("ckpt.pt")).unwrap();
    let ran = ddexp(dir.path(), &["import", "nanodd", "run", "--out", "m"]);
    ran.refused(&["run is a folder", "run/ckpt.pt"]);
    assert!(!dir.path().join("m").exists());
}
