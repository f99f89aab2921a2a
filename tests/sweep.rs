//! `ddexp sweep` through the binary, with tiny experiments that train in well under a second:
//! members run and are recorded, a re-run skips or resumes them, invalid members stop the
//! sweep before anything is written, failures are isolated, and Ctrl-C checkpoints.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::cli::{ddexp, text};
use ddexp::results::{
    Attempt, FolderLock, MemberStatus, RunInfo, RunStatus, SweepMemberRow, read_rows,
};

/// A tiny experiment named `name` (a few steps on the synthetic corpus, a tiny evaluation).
fn tiny(name: &str) -> String {
    format!(
        r#"(
    name: "{name}",
    network: (n_embed: 32, n_heads: 2, n_blocks: 1, n_cond: 16),
    dataset: Synthetic(seq_len: 16, train_tokens: 20000, eval_tokens: 4000),
    train: (batch_size: 4, grad_accum: 1, max_iters: 6, warmup_iters: 2, log_interval: 2, eval_interval: 3, eval_iters: 2),
    eval: (kl_batches: 2, recon_batches: 1, batch_size: 4),
)
"#
    )
}

/// A temporary working folder with a sweep folder `sw` holding `files`.
fn sweep_folder(files: &[(&str, String)]) -> tempfile::TempDir {
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir(work.path().join("sw")).unwrap();
    for (name, content) in files {
        std::fs::write(work.path().join("sw").join(name), content).unwrap();
    }
    work
}

fn summary(work: &Path) -> Vec<SweepMemberRow> {
    read_rows(&work.join("results/sweeps/sw/summary.csv")).unwrap()
}

fn run_path(work: &Path, row: &SweepMemberRow) -> PathBuf {
    row.run_path(&work.join("results/sweeps/sw"))
        .unwrap_or_else(|| panic!("{} has no run folder", row.member))
}

fn run_info(dir: &Path) -> RunInfo {
    RunInfo::load(&dir.join("run.json")).unwrap()
}

/// The run folders under results/<experiment>.
fn runs_of(work: &Path, experiment: &str) -> Vec<PathBuf> {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(work.join("results").join(experiment))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    runs.sort();
    runs
}

#[test]
fn members_run_and_a_second_invocation_skips_them() {
    let work = sweep_folder(&[("a.ron", tiny("t_a")), ("b.ron", tiny("t_b"))]);
    let out = ddexp(&["sweep", "sw"], work.path());
    assert!(out.status.success(), "{}", text(&out));

    let rows = summary(work.path());
    let members: Vec<&str> = rows.iter().map(|r| r.member.as_str()).collect();
    assert_eq!(members, ["a", "b"]);
    for (row, experiment) in rows.iter().zip(["t_a", "t_b"]) {
        assert_eq!(row.status, MemberStatus::Completed, "{row:?}");
        let dir = run_path(work.path(), row);
        assert_eq!(runs_of(work.path(), experiment), std::slice::from_ref(&dir));
        assert_eq!(run_info(&dir).status, RunStatus::Completed);
        assert!(row.val_bits.is_some() && row.val_se.is_some(), "{row:?}");
        assert!(row.test_bits.is_some() && row.test_se.is_some(), "{row:?}");
        assert!(row.wall_s.is_some_and(|w| w > 0.0) && row.tokens_per_s.is_some());
        assert!(row.error.is_none());
        assert!(
            work.path()
                .join(format!("results/sweeps/sw/logs/{}.log", row.member))
                .is_file()
        );
        assert!(
            work.path()
                .join(format!("results/sweeps/sw/members/{}.ron", row.member))
                .is_file()
        );
    }
    let before =
        std::fs::read_to_string(work.path().join("results/sweeps/sw/summary.csv")).unwrap();

    let out = ddexp(&["sweep", "sw"], work.path());
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("skip        a (completed in"),
        "{}",
        text(&out)
    );
    assert_eq!(runs_of(work.path(), "t_a").len(), 1, "nothing ran again");
    assert_eq!(runs_of(work.path(), "t_b").len(), 1, "nothing ran again");
    let after = std::fs::read_to_string(work.path().join("results/sweeps/sw/summary.csv")).unwrap();
    assert_eq!(after, before);
    assert!(
        !ddexp::results::is_lock_held(&work.path().join("results/sweeps/sw/sweep.lock")),
        "the lock is released"
    );
}

#[test]
fn an_invalid_member_stops_the_sweep_before_anything_runs() {
    let work = sweep_folder(&[
        ("a.ron", tiny("t_a")),
        (
            "b.ron",
            tiny("t_b").replace("n_blocks: 1", "n_blocks: \"one\""),
        ),
    ]);
    let out = ddexp(&["sweep", "sw"], work.path());
    assert!(!out.status.success());
    let shown = text(&out);
    assert!(
        shown.contains("sw/b.ron:3:50: error: `network.n_blocks`"),
        "{shown}"
    );
    assert!(shown.contains("nothing was run or written"), "{shown}");
    assert!(!work.path().join("results").exists(), "nothing is written");

    let out = ddexp(&["sweep", "no_such_sweep"], work.path());
    assert!(!out.status.success());
    let shown = text(&out);
    assert!(shown.contains("no_such_sweep does not exist"), "{shown}");
    assert!(!work.path().join("results").exists(), "nothing is written");
}

#[test]
fn a_member_that_fails_at_run_time_is_recorded_and_the_others_complete() {
    let missing_data = tiny("t_missing").replace(
        "dataset: Synthetic(seq_len: 16, train_tokens: 20000, eval_tokens: 4000)",
        "dataset: Text(root: \"no/such/corpus\", seq_len: 16, tokenizer: Char)",
    );
    // No clipping and an absurd learning rate: the loss turns non-finite after one step.
    let diverging = tiny("t_nan").replace(
        "warmup_iters: 2,",
        "warmup_iters: 0, lr: 1e30, grad_clip: 0.0,",
    );
    let work = sweep_folder(&[
        ("a.ron", missing_data),
        ("b.ron", tiny("t_b")),
        ("c.ron", diverging),
    ]);
    let out = ddexp(&["sweep", "sw"], work.path());
    assert!(!out.status.success());
    assert!(
        text(&out).contains("2 of 3 members did not complete (a, c)"),
        "{}",
        text(&out)
    );

    let rows = summary(work.path());
    let (a, b, c) = (&rows[0], &rows[1], &rows[2]);
    assert_eq!(a.status, MemberStatus::Failed);
    assert_eq!(a.run_dir, "", "it failed before creating a run folder");
    let error = a.error.as_deref().unwrap();
    assert!(error.contains("no/such/corpus does not exist"), "{error}");
    assert!(error.contains("logs/a.log"), "{error}");

    assert_eq!(b.status, MemberStatus::Completed);
    assert!(b.val_bits.is_some());

    assert_eq!(c.status, MemberStatus::Failed);
    assert_eq!(
        run_info(&run_path(work.path(), c)).status,
        RunStatus::Failed
    );
    assert!(c.error.as_deref().unwrap().contains("non-finite"), "{c:?}");
}

#[test]
fn a_grid_expands_into_named_members() {
    let work = sweep_folder(&[
        ("base.ron", tiny("grid")),
        (
            "sweep.ron",
            r#"(
    base: "base.ron",
    set: {"train.max_iters": 4},
    grid: {"sampler": [Uniform, LowDiscrepancy], "seed": [1, 2]},
)"#
            .to_string(),
        ),
    ]);
    let out = ddexp(&["sweep", "sw", "--dry-run"], work.path());
    assert!(out.status.success(), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    let members: Vec<&str> = shown
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        members,
        [
            "grid-sampler_Uniform-seed_1",
            "grid-sampler_Uniform-seed_2",
            "grid-sampler_LowDiscrepancy-seed_1",
            "grid-sampler_LowDiscrepancy-seed_2",
        ]
    );
    assert!(shown.contains("sampler=LowDiscrepancy seed=2"), "{shown}");
    assert!(
        !work.path().join("results").exists(),
        "a dry run writes nothing"
    );

    // The members run under their own names, in that order; Uniform first.
    let out = ddexp(&["sweep", "sw"], work.path());
    assert!(out.status.success(), "{}", text(&out));
    let rows = summary(work.path());
    let names: Vec<&str> = rows.iter().map(|r| r.member.as_str()).collect();
    assert_eq!(names, members);
    let experiment =
        std::fs::read_to_string(run_path(work.path(), &rows[2]).join("experiment.ron")).unwrap();
    assert!(
        experiment.contains("name: \"grid-sampler_LowDiscrepancy-seed_1\""),
        "{experiment}"
    );
    assert!(
        experiment.contains("sampler: LowDiscrepancy"),
        "{experiment}"
    );
    assert!(experiment.contains("max_iters: 4"), "{experiment}");
}

#[test]
fn a_misspelt_axis_is_a_located_error_for_sweep_and_validate() {
    let work = sweep_folder(&[
        ("base.ron", tiny("grid")),
        (
            "sweep.ron",
            "(\n    base: \"base.ron\",\n    grid: {\"seed\": [1, 2], \"samplr\": [Uniform]},\n)"
                .to_string(),
        ),
    ]);
    for command in [&["sweep", "sw"][..], &["validate", "sw"]] {
        let out = ddexp(command, work.path());
        assert!(!out.status.success());
        let shown = text(&out);
        assert!(
            shown.contains("sw/sweep.ron:3:29: error: `samplr`: unknown field `samplr`"),
            "{shown}"
        );
        assert!(shown.contains("did you mean `sampler`?"), "{shown}");
    }
    assert!(!work.path().join("results").exists());
}

/// Rewrites a run's run.json as a run that stopped in some way would have left it.
fn set_status(dir: &Path, status: &str, pid: u32) {
    let path = dir.join("run.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["status"] = status.into();
    json["pid"] = pid.into();
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
}

#[test]
fn a_stopped_member_is_resumed_and_one_without_a_checkpoint_starts_over() {
    let work = sweep_folder(&[("a.ron", tiny("t_a")), ("b.ron", tiny("t_b"))]);
    let out = ddexp(&["sweep", "sw"], work.path());
    assert!(out.status.success(), "{}", text(&out));
    let first = summary(work.path());
    let (a_dir, b_dir) = (
        run_path(work.path(), &first[0]),
        run_path(work.path(), &first[1]),
    );

    // a was interrupted after a checkpoint; b was killed (it still says running, but its
    // process is gone) before its first checkpoint.
    set_status(&a_dir, "interrupted", std::process::id());
    let gone = Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    drop(gone.wait_with_output());
    set_status(&b_dir, "running", gone_pid);
    std::fs::remove_dir_all(b_dir.join("checkpoints")).unwrap();

    let out = ddexp(&["sweep", "sw", "--dry-run"], work.path());
    let shown = text(&out);
    assert!(
        shown.contains(&format!(
            "resume  {}",
            first[0].run_dir.replace("../../", "results/")
        )),
        "{shown}"
    );
    assert!(
        shown.contains("stopped before its first checkpoint"),
        "{shown}"
    );

    let out = ddexp(&["sweep", "sw"], work.path());
    assert!(out.status.success(), "{}", text(&out));
    let second = summary(work.path());

    // a continued in its own folder from its checkpoint...
    assert_eq!(second[0].run_dir, first[0].run_dir);
    let info = run_info(&a_dir);
    assert_eq!((info.status, info.resumed.len()), (RunStatus::Completed, 1));
    assert_eq!(second[0].status, MemberStatus::Completed);
    assert!(
        second[0].wall_s > first[0].wall_s,
        "wall time adds up over attempts"
    );
    // ...and b started a new run.
    assert_ne!(second[1].run_dir, first[1].run_dir);
    assert_eq!(runs_of(work.path(), "t_b").len(), 2);
    assert_eq!(
        run_info(&run_path(work.path(), &second[1])).status,
        RunStatus::Completed
    );
}

#[test]
fn a_member_whose_run_another_process_writes_is_left_alone() {
    let work = sweep_folder(&[("a.ron", tiny("t_a"))]);
    let out = ddexp(&["sweep", "sw"], work.path());
    assert!(out.status.success(), "{}", text(&out));
    let a_dir = run_path(work.path(), &summary(work.path())[0]);

    // Some process (this test) is writing into a's folder, e.g. a `ddexp run --resume`.
    set_status(&a_dir, "running", std::process::id());
    let Attempt::Acquired(_writer) = FolderLock::try_acquire(&a_dir.join("run.lock")).unwrap()
    else {
        panic!("the finished sweep still holds the run's lock")
    };
    let before = std::fs::read_to_string(a_dir.join("run.json")).unwrap();

    let out = ddexp(&["sweep", "sw", "--dry-run"], work.path());
    let shown = text(&out);
    assert!(shown.contains("is running in another process"), "{shown}");
    let out = ddexp(&["sweep", "sw"], work.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(runs_of(work.path(), "t_a").len(), 1, "no second run of a");
    assert_eq!(
        std::fs::read_to_string(a_dir.join("run.json")).unwrap(),
        before,
        "the busy run is not touched"
    );
}

/// Ctrl-C reaches the running member through the sweep: it checkpoints and exits 130, the
/// sweep records it `interrupted`, starts nothing else, exits 130, and a re-run would resume.
#[cfg(unix)]
#[test]
fn ctrl_c_checkpoints_the_running_member_and_stops_the_sweep() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    // Far too long to finish: it can only end by being interrupted.
    let endless = tiny("t_long").replace(
        "max_iters: 6,",
        "max_iters: 100000000, checkpoint: (every: 1),",
    );
    let work = sweep_folder(&[("a.ron", endless), ("b.ron", tiny("t_b"))]);
    let sweep = common::cli::command()
        .args(["sweep", "sw"])
        .current_dir(work.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    // Wait (up to a minute) until the member has written a checkpoint.
    let checkpointed = || {
        runs_of(work.path(), "t_long")
            .iter()
            .any(|r| r.join("checkpoints/latest.safetensors").is_file())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !checkpointed() {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    kill(Pid::from_raw(sweep.id() as i32), Signal::SIGINT).unwrap();
    let out = sweep.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));

    let rows = summary(work.path());
    assert_eq!(rows[0].status, MemberStatus::Interrupted, "{rows:?}");
    assert_eq!(rows[1].status, MemberStatus::Pending, "nothing new starts");
    let dir = run_path(work.path(), &rows[0]);
    let info = run_info(&dir);
    assert_eq!(info.status, RunStatus::Interrupted);
    assert!(info.checkpoint_iter.is_some());
    assert!(runs_of(work.path(), "t_b").is_empty());

    let out = ddexp(&["sweep", "sw", "--dry-run"], work.path());
    assert!(
        text(&out).contains(&format!(
            "resume  {}",
            dir.strip_prefix(work.path()).unwrap().display()
        )),
        "{}",
        text(&out)
    );
}
