//! `ddexp validate` and `ddexp schema` through the binary: every shipped experiment is
//! valid, every kind of mistake gets a located message, and nothing is written.

mod common;

use std::path::PathBuf;

use common::cli::{ddexp, text};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_shipped_experiment_validates() {
    let files = ddexp::spec::experiment_files(&repo().join("experiments")).unwrap();
    assert!(
        files.len() >= 3,
        "expected the shipped experiments, found {files:?}"
    );
    let out = ddexp(&["validate", "experiments"], &repo());
    assert!(out.status.success(), "{}", text(&out));
    for f in files {
        let shown = f.strip_prefix(repo()).unwrap().display().to_string();
        assert!(
            text(&out).contains(&format!("ok      {shown}")),
            "{shown} not reported ok:\n{}",
            text(&out)
        );
    }
}

#[test]
fn schema_files_match_the_code() {
    let out = ddexp(&["schema", "--check"], &repo());
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn schema_drift_is_caught_and_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let schemas = dir.path().join("schemas");
    std::fs::create_dir(&schemas).unwrap();
    let file = schemas.join("experiment.schema.json");
    let current = std::fs::read_to_string(repo().join("schemas/experiment.schema.json")).unwrap();
    std::fs::write(&file, current.replace("\"minimum\": 2", "\"minimum\": 3")).unwrap();

    let out = ddexp(
        &["schema", "--check", "--dir", schemas.to_str().unwrap()],
        dir.path(),
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("experiment.schema.json"),
        "{}",
        text(&out)
    );

    let out = ddexp(&["schema", "--dir", schemas.to_str().unwrap()], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), current);
}

const VALID: &str = r#"(
    name: "tiny",
    network: (n_embed: 32, n_heads: 2, n_blocks: 1, n_cond: 16),
    dataset: Synthetic(seq_len: 16),
    train: (batch_size: 4, max_iters: 10, warmup_iters: 2),
)
"#;

/// Writes `content` as an experiment, validates it with `overrides`, and checks that the
/// command fails and its output contains each of `expect`. The folder must hold nothing
/// else afterwards.
fn rejects(content: &str, overrides: &[&str], expect: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("exp.ron");
    std::fs::write(&file, content).unwrap();
    let mut args = vec!["validate", "exp.ron"];
    for o in overrides {
        args.extend(["--set", o]);
    }
    let out = ddexp(&args, dir.path());
    let shown = text(&out);
    assert!(
        !out.status.success(),
        "expected failure for:\n{content}\n{overrides:?}\n{shown}"
    );
    for e in expect {
        assert!(shown.contains(e), "missing `{e}` in:\n{shown}");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "validate wrote files: {left:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), content);
}

#[test]
fn the_valid_base_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("exp.ron"), VALID).unwrap();
    let out = ddexp(
        &[
            "validate",
            "exp.ron",
            "--set",
            "train.lr=3e-4",
            "--set",
            "sampler=LowDiscrepancy",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn malformed_ron() {
    rejects(
        "(\n    name: \"tiny\",\n    dataset: Synthetic(seq_len: 16\n",
        &[],
        &["exp.ron:4:1", "invalid RON", "expected `,` or `)`"],
    );
    rejects(
        "(\n    name: \"tiny\" dataset: Synthetic,\n)",
        &[],
        &["exp.ron:2:18", "expected `,` or `)`"],
    );
}

#[test]
fn wrong_type() {
    rejects(
        &VALID.replace("n_blocks: 1", "n_blocks: \"one\""),
        &[],
        &[
            "exp.ron:3:50",
            "`network.n_blocks`",
            "wrong type",
            "expected an integer",
            "found the string \"one\"",
        ],
    );
    rejects(
        &VALID.replace("batch_size: 4", "batch_size: 4.5"),
        &[],
        &["exp.ron:5:25", "`train.batch_size`", "expected an integer"],
    );
}

#[test]
fn unknown_field_with_suggestion() {
    rejects(
        &VALID.replace("warmup_iters", "warmup_iter"),
        &[],
        &[
            "exp.ron:5:43",
            "`train.warmup_iter`",
            "unknown field `warmup_iter`",
            "did you mean `warmup_iters`?",
        ],
    );
    rejects(
        &VALID.replace("name:", "nmae:"),
        &[],
        &[
            "exp.ron:2:5",
            "unknown field `nmae`",
            "did you mean `name`?",
        ],
    );
}

#[test]
fn misspelt_variant_with_suggestion() {
    rejects(
        &VALID.replace(
            "dataset: Synthetic",
            "sampler: LowDiscrepency,\n    dataset: Synthetic",
        ),
        &[],
        &[
            "exp.ron:4:14",
            "`sampler`",
            "unknown variant `LowDiscrepency`",
            "did you mean `LowDiscrepancy`?",
        ],
    );
    rejects(
        &VALID.replace("Synthetic(", "Synthetik("),
        &[],
        &["exp.ron:4:14", "`dataset`", "did you mean `Synthetic`?"],
    );
}

#[test]
fn non_positive_learning_rate() {
    rejects(
        &VALID.replace("batch_size: 4", "batch_size: 4, lr: -1e-3"),
        &[],
        &["exp.ron:5:32", "`train.lr`", "must be greater than 0"],
    );
    rejects(
        &VALID.replace("batch_size: 4", "batch_size: 4, lr: 0"),
        &[],
        &["`train.lr`", "must be greater than 0"],
    );
}

#[test]
fn heads_must_divide_the_width() {
    rejects(
        &VALID.replace("n_heads: 2", "n_heads: 3"),
        &[],
        &[
            "exp.ron:3:37",
            "`network.n_heads`",
            "n_heads must divide n_embed",
            "found 3",
        ],
    );
}

#[test]
fn odd_head_dimension() {
    rejects(
        &VALID.replace("n_embed: 32, n_heads: 2", "n_embed: 30, n_heads: 2"),
        &[],
        &[
            "`network.n_heads`",
            "head dimension must be even",
            "30 / 2 = 15",
        ],
    );
}

#[test]
fn zero_batch() {
    rejects(
        &VALID.replace("batch_size: 4", "batch_size: 0"),
        &[],
        &["exp.ron:5:25", "`train.batch_size`", "must be at least 1"],
    );
}

#[test]
fn warmup_past_the_end() {
    rejects(
        &VALID.replace("warmup_iters: 2", "warmup_iters: 10"),
        &[],
        &[
            "exp.ron:5:57",
            "`train.warmup_iters`",
            "warm-up must end before the last iteration",
            "fewer than train.max_iters (10)",
        ],
    );
}

#[test]
fn min_lr_above_lr() {
    rejects(
        &VALID.replace("batch_size: 4", "batch_size: 4, lr: 1e-4, min_lr: 1e-3"),
        &[],
        &["`train.min_lr`", "min_lr must not exceed lr"],
    );
}

#[test]
fn sequence_too_short() {
    rejects(
        &VALID.replace("seq_len: 16", "seq_len: 1"),
        &[],
        &["exp.ron:4:33", "`dataset.seq_len`", "must be at least 2"],
    );
}

#[test]
fn missing_required_field() {
    rejects(
        "(\n    name: \"tiny\",\n    network: (n_embed: 32, n_heads: 2),\n)\n",
        &[],
        &[
            "exp.ron:1:1",
            "`dataset`",
            "missing required field `dataset`",
        ],
    );
}

#[test]
fn bad_name() {
    rejects(
        &VALID.replace("\"tiny\"", "\"my run/1\""),
        &[],
        &["exp.ron:2:11", "`name`", "not allowed"],
    );
}

#[test]
fn duplicate_field() {
    rejects(
        &VALID.replace("n_blocks: 1", "n_blocks: 1, n_blocks: 2"),
        &[],
        &["exp.ron:3:53", "given twice", "first at line 3, column 40"],
    );
}

#[test]
fn override_with_unknown_path() {
    rejects(
        VALID,
        &["train.lrr=1e-3"],
        &[
            "--set train.lrr=1e-3:1:7",
            "unknown field `lrr`",
            "did you mean `lr`?",
        ],
    );
    rejects(
        VALID,
        &["trian.lr=1e-3"],
        &["--set trian.lr=1e-3:1:1", "did you mean `train`?"],
    );
}

#[test]
fn override_with_bad_value() {
    rejects(
        VALID,
        &["train.lr=fast"],
        &[
            "--set train.lr=fast:1:10",
            "`train.lr`",
            "expected a number",
        ],
    );
    rejects(
        VALID,
        &["train.lr=-1"],
        &["--set train.lr=-1:1:10", "must be greater than 0"],
    );
    rejects(
        VALID,
        &["sampler=Uniformm"],
        &["--set sampler=Uniformm:1:9", "did you mean `Uniform`?"],
    );
    rejects(
        VALID,
        &["train.lr=[1,"],
        &["--set train.lr=[1,:1:13", "invalid RON value"],
    );
    rejects(VALID, &["train.lr"], &["must look like path=value"]);
    // Text without RON's double quotes: the help shows both spellings.
    rejects(
        VALID,
        &["name=foo"],
        &["expected a string", r#"--set 'name="foo"'"#],
    );
    rejects(
        VALID,
        &["name=my/run"],
        &["invalid RON value", r#"--set 'name="my/run"'"#],
    );
}

#[test]
fn synthetic_splits_too_small_for_a_sequence() {
    rejects(
        &VALID.replace(
            "Synthetic(seq_len: 16)",
            "Synthetic(seq_len: 1500, train_tokens: 1000, eval_tokens: 2000)",
        ),
        &[],
        &[
            "`dataset.seq_len`",
            "sequences must fit in the train split",
            "less than dataset.train_tokens (1000)",
        ],
    );
}

#[test]
fn orchestrator_that_is_not_an_address() {
    rejects(
        VALID,
        &[r#"topology.orchestrator=Some("10.0.0.1")"#],
        &[
            "`topology.orchestrator`",
            "not an address: no `:port`",
            "host:port of node 0",
        ],
    );
}

#[test]
fn overrides_reach_defaults_and_variants() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("exp.ron");
    std::fs::write(&file, VALID).unwrap();
    let loaded = ddexp::spec::load(
        &file,
        &[
            "model.lambda_ce=0.1".into(),
            "train.ema.beta=0.5".into(),
            "topology.devices=[0, 1]".into(),
            "dataset.seq_len=32".into(),
        ],
    )
    .unwrap();
    let e = loaded.experiment;
    assert_eq!(
        e.model,
        ddexp::spec::Process::D3pmAbsorbing {
            timesteps: 1000,
            lambda_ce: 0.1,
            time_conditioning: true,
        }
    );
    assert_eq!(e.train.ema.beta, 0.5);
    assert_eq!(e.train.batch_size, 4);
    assert_eq!(e.topology.devices, vec![0, 1]);
    assert_eq!(e.dataset.seq_len(), 32);
}

#[test]
fn resolved_experiment_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("exp.ron");
    std::fs::write(&file, VALID).unwrap();
    let first = ddexp::spec::load(&file, &["train.lr=3e-4".into()])
        .unwrap()
        .experiment;
    let resolved = dir.path().join("resolved.ron");
    std::fs::write(&resolved, ddexp::spec::to_ron(&first)).unwrap();
    let again = ddexp::spec::load(&resolved, &[]).unwrap().experiment;
    assert_eq!(first, again);
}

#[test]
fn mdlm_schedule_parameters_are_checked() {
    let mdlm =
        |model: &str| VALID.replace("name: \"tiny\",", &format!("name: \"tiny\",\n    {model}"));
    rejects(
        &mdlm("model: Mdlm(eps: 0),"),
        &[],
        &["exp.ron:3:22", "`model.eps`", "must be greater than 0"],
    );
    rejects(
        &mdlm("model: Mdlm(t_min: 1.0),"),
        &[],
        &["exp.ron:3:24", "`model.t_min`", "must be less than 1"],
    );
    rejects(
        &mdlm("model: Mdlm(schedule: Linear),"),
        &[],
        &["`model.schedule`", "did you mean `LogLinear`"],
    );
    rejects(
        VALID,
        &["model=Mdlm(timesteps: 10)"],
        &["unknown field", "timesteps"],
    );

    // Legal but far from MDLM's values: a warning, located.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("exp.ron"),
        mdlm("model: Mdlm(eps: 0.5, t_min: 0.2),"),
    )
    .unwrap();
    let out = ddexp(&["validate", "exp.ron"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    for part in [
        "exp.ron:3:22: warning: `model.eps`",
        "exp.ron:3:34: warning: `model.t_min`",
    ] {
        assert!(text(&out).contains(part), "{part} in {}", text(&out));
    }

    // A resolved experiment writes D3PM's time_conditioning only when it is false, and every
    // process reads back as written.
    for (model, written) in [
        ("model: D3pmAbsorbing(timesteps: 10),", None),
        (
            "model: D3pmAbsorbing(time_conditioning: false),",
            Some("time_conditioning: false"),
        ),
        (
            "model: Mdlm(schedule: Cosine, time_conditioning: true),",
            Some("time_conditioning: true"),
        ),
    ] {
        let file = dir.path().join("m.ron");
        std::fs::write(&file, mdlm(model)).unwrap();
        let experiment = ddexp::spec::load(&file, &[]).unwrap().experiment;
        let ron = ddexp::spec::to_ron(&experiment);
        assert_eq!(
            ron.contains("time_conditioning"),
            written.is_some(),
            "{ron}"
        );
        if let Some(written) = written {
            assert!(ron.contains(written), "{ron}");
        }
        std::fs::write(&file, &ron).unwrap();
        assert_eq!(
            ddexp::spec::load(&file, &[]).unwrap().experiment,
            experiment
        );
    }
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_without_the_feature_warns_in_validate() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("exp.ron"), VALID).unwrap();
    let out = ddexp(
        &["validate", "exp.ron", "--set", "topology.backend=Cuda"],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("warning: `topology.backend`"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("cargo build --release --features cuda"),
        "{}",
        text(&out)
    );
}

#[test]
fn missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = ddexp(&["validate", "nope.ron"], dir.path());
    assert!(!out.status.success());
    assert!(text(&out).contains("nope.ron"), "{}", text(&out));
}
