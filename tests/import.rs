//! `ddexp import nanodd`: every fixture checkpoint becomes a model folder that reloads with
//! the reference's logits; bad input gives a precise error and leaves nothing behind.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::tensor::{Int, Tensor, TensorData};
use common::fixtures::open_model;
use ddexp::checkpoint::{
    INFO_FILE, WEIGHTS_FILE, import_nanodd, read_model_info, read_nanodd_checkpoint, tensor_file,
};
use ddexp::model::WeightSet;
use ddexp::results::EXPERIMENT_FILE;

#[test]
fn imported_fixtures_reload_with_the_reference_logits() {
    for case in common::fixtures::fixture_cases() {
        let recorded = tensor_file::read(&case.join("cases.safetensors")).unwrap();
        let meta: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(case.join("meta.json")).unwrap()).unwrap();
        let args = &meta["model_args"];
        for which in [WeightSet::Ema, WeightSet::Model] {
            let dir = tempfile::tempdir().unwrap();
            let out = dir
                .path()
                .join("models")
                .join(common::fixtures::case_name(&case));
            import_nanodd(&case.join("ckpt.pt"), &out, which).unwrap();
            for file in [EXPERIMENT_FILE, WEIGHTS_FILE, INFO_FILE] {
                assert!(out.join(file).is_file(), "{file} written");
            }

            // The weights keep nanoDD's state-dict names, so nanoDD can load them back.
            let written = tensor_file::read(&out.join(WEIGHTS_FILE)).unwrap();
            let source = read_nanodd_checkpoint(&case.join("ckpt.pt"), which).unwrap();
            assert_eq!(
                written.names().collect::<Vec<_>>(),
                source.weights.names().collect::<Vec<_>>()
            );
            assert_eq!(
                written.get("net.blocks.0.attn_qkv.weight"),
                source.weights.get("net.blocks.0.attn_qkv.weight")
            );

            let device = Default::default();
            let (saved, model) = open_model::<Flex>(&out, &device);
            let network = &saved.experiment.network;
            assert_eq!(network.n_heads as u64, args["n_heads"].as_u64().unwrap());
            assert_eq!(network.n_blocks as u64, args["n_blocks"].as_u64().unwrap());
            let info = read_model_info(&out).unwrap();
            assert_eq!(info.weights, which);
            assert_eq!(info.num_classes as u64, meta["K"].as_u64().unwrap());
            assert_eq!(
                saved.experiment.model.timesteps().map(|t| t as u64),
                Some(args["T"].as_u64().unwrap())
            );

            let x = Tensor::<Flex, 2, Int>::from_data(
                recorded.get("x_tplus1").unwrap().clone(),
                &device,
            );
            let t: Vec<f32> = recorded
                .get("t")
                .unwrap()
                .clone()
                .convert::<f32>()
                .to_vec()
                .unwrap();
            let n = t.len();
            let times = Tensor::from_data(
                TensorData::new(t.iter().map(|t| t + 1.0).collect(), [n]),
                &device,
            );
            let logits = model
                .net
                .forward(x, times)
                .into_data()
                .to_vec::<f32>()
                .unwrap();
            let expected = recorded
                .get(&format!("{}.logits", which.name()))
                .unwrap()
                .to_vec::<f32>()
                .unwrap();
            let scale = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let err = logits
                .iter()
                .zip(&expected)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                err / scale < 1e-4,
                "{}: logits differ by {err} (scale {scale})",
                case.display()
            );
        }
    }
}

#[test]
fn the_recorded_training_arguments_are_kept() {
    // tiny_text8's ckpt.pt records training_args {batch_size: 3, learning_rate: 1e-3,
    // weight_decay: 0.1, training_seed: 0} and total_batch_size 3: one micro-batch per step.
    let case = common::fixtures::fixture_cases()
        .into_iter()
        .find(|case| common::fixtures::case_name(case) == "tiny_text8")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny");
    import_nanodd(&case.join("ckpt.pt"), &out, WeightSet::Ema).unwrap();
    let experiment = ddexp::spec::load(&out.join(EXPERIMENT_FILE), &[])
        .unwrap()
        .experiment;
    let train = &experiment.train;
    assert_eq!((train.batch_size, train.grad_accum), (3, 1));
    assert_eq!((train.lr, train.weight_decay), (1e-3, 0.1));
    assert_eq!(experiment.seed, 0);
    assert_eq!(experiment.global_batch(), 3);
}

/// The first fixture checkpoint, for the corruption tests.
fn fixture_ckpt() -> PathBuf {
    common::fixtures::fixture_cases()
        .into_iter()
        .find(|case| common::fixtures::case_name(case) == "tiny_text8")
        .unwrap_or_else(|| common::fixtures::fixture_cases().remove(0))
        .join("ckpt.pt")
}

/// A copy of a torch zip checkpoint with its pickle edited by `edit`.
fn edited_ckpt(src: &Path, dst: &Path, edit: impl Fn(&mut Vec<u8>)) {
    let mut archive = zip::ZipArchive::new(fs::File::open(src).unwrap()).unwrap();
    let mut writer = zip::ZipWriter::new(fs::File::create(dst).unwrap());
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).unwrap();
        let name = entry.name().to_string();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        if name.ends_with("data.pkl") {
            edit(&mut data);
        }
        writer.start_file(name, options).unwrap();
        writer.write_all(&data).unwrap();
    }
    writer.finish().unwrap();
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("pattern in the fixture pickle")
}

/// Sets the small integer that follows `key` in model_args (BININT1 after the memo opcode).
fn set_arg(data: &mut [u8], key: &str, from: u8, to: u8) {
    let end = find(data, key.as_bytes()) + key.len();
    let at = end + data[end..end + 8].iter().position(|&b| b == b'K').unwrap() + 1;
    assert_eq!(data[at], from, "model_args.{key} in the fixture");
    data[at] = to;
}

#[test]
fn bad_checkpoints_fail_precisely_and_leave_nothing_behind() {
    let ckpt = fixture_ckpt();
    let dir = tempfile::tempdir().unwrap();
    let input = |name: &str| dir.path().join(name);

    fs::write(input("garbage.pt"), b"definitely not a checkpoint").unwrap();
    let bytes = fs::read(&ckpt).unwrap();
    fs::write(input("truncated.pt"), &bytes[..bytes.len() / 2]).unwrap();
    // pickle.dumps({"foo": 1}, protocol=2): a valid pickle that is not a checkpoint.
    fs::write(
        input("other.pkl"),
        b"\x80\x02}q\x00X\x03\x00\x00\x00fooq\x01K\x01s.",
    )
    .unwrap();
    edited_ckpt(&ckpt, &input("no_heads.pt"), |d| {
        let at = find(d, b"n_heads");
        d[at..at + 7].copy_from_slice(b"n_hexds");
    });
    edited_ckpt(&ckpt, &input("more_blocks.pt"), |d| {
        set_arg(d, "n_blocks", 2, 3)
    });
    edited_ckpt(&ckpt, &input("fewer_heads.pt"), |d| {
        set_arg(d, "n_heads", 4, 2)
    });
    edited_ckpt(&ckpt, &input("wider.pt"), |d| set_arg(d, "n_embed", 64, 32));

    let cases = [
        ("missing.pt", "no such file"),
        ("garbage.pt", "is not a readable PyTorch checkpoint"),
        ("truncated.pt", "is not a readable PyTorch checkpoint"),
        (
            "other.pkl",
            "is not a nanoDD training checkpoint: it has no `model`",
        ),
        ("no_heads.pt", "model_args lack `n_heads`"),
        ("more_blocks.pt", "missing weight `blocks.2.norm1.weight`"),
        ("fewer_heads.pt", "does not match n_heads = 2"),
        (
            "wider.pt",
            "`vocab_embed.weight` has shape [28, 64], expected [28, 32]",
        ),
    ];
    let before = listing(dir.path());
    for (file, expected) in cases {
        let out = dir.path().join("out").join("model");
        let err = import_nanodd(&input(file), &out, WeightSet::Ema)
            .map(|_| ())
            .expect_err(file);
        let message = format!("{err:#}");
        assert!(
            message.contains(expected),
            "{file}: `{message}` lacks `{expected}`"
        );
        assert!(!out.exists(), "{file}: nothing written");
        assert_eq!(listing(dir.path()), before, "{file}: no file left behind");
    }
}

#[test]
fn an_existing_folder_is_never_overwritten() {
    let ckpt = fixture_ckpt();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("keep.txt"), "mine").unwrap();
    let err = import_nanodd(&ckpt, &out, WeightSet::Ema)
        .unwrap_err()
        .to_string();
    assert!(err.contains("already exists and is not empty"), "{err}");
    assert_eq!(fs::read_to_string(out.join("keep.txt")).unwrap(), "mine");
    assert_eq!(fs::read_dir(&out).unwrap().count(), 1);

    // An empty folder is filled.
    fs::remove_file(out.join("keep.txt")).unwrap();
    import_nanodd(&ckpt, &out, WeightSet::Model).unwrap();
    assert!(out.join(WEIGHTS_FILE).is_file());
}

#[test]
fn cli_imports_and_reports_errors() {
    let ckpt = fixture_ckpt();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("text8");
    let run = |args: &[&std::ffi::OsStr]| common::cli::command().args(args).output().unwrap();

    let ok = run(&[
        "import".as_ref(),
        "nanodd".as_ref(),
        ckpt.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--weights".as_ref(),
        "model".as_ref(),
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("imported the model weights"));
    let info: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join(INFO_FILE)).unwrap()).unwrap();
    assert_eq!(info["weights"], "model");

    let garbage = dir.path().join("garbage.pt");
    fs::write(&garbage, b"nope").unwrap();
    let bad = run(&[
        "import".as_ref(),
        "nanodd".as_ref(),
        garbage.as_os_str(),
        "--out".as_ref(),
        dir.path().join("x").as_os_str(),
    ]);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("error:") && stderr.contains("garbage.pt"),
        "{stderr}"
    );
    assert!(!dir.path().join("x").exists());
}

fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .collect();
    files.sort();
    files
}
