//! Where the nanoDD fixtures are, and opening a model folder.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use ddexp::checkpoint::{self, CheckpointChoice, LoadedModel, SavedModel};

/// The fixture root: `DDEXP_NANODD_FIXTURES` if set; else `../shared/fixtures/nanodd` next
/// to the crate if it exists; else the copy vendored in `tests/fixtures/nanodd` (what a clean
/// clone and CI use). Panics — the tests fail, they do not skip — when the root is missing
/// or holds no case folder, and when a case folder lacks one of its files.
pub fn fixture_cases() -> Vec<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = match std::env::var_os("DDEXP_NANODD_FIXTURES") {
        Some(root) => PathBuf::from(root),
        None => {
            let shared = manifest.join("../shared/fixtures/nanodd");
            if shared.is_dir() {
                shared
            } else {
                manifest.join("tests/fixtures/nanodd")
            }
        }
    };
    assert!(
        root.is_dir(),
        "nanoDD fixture root {} does not exist (set DDEXP_NANODD_FIXTURES)",
        root.display()
    );
    // Every folder is a case; an incomplete one fails rather than being skipped.
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", root.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_dir())
        .collect();
    cases.sort();
    assert!(
        !cases.is_empty(),
        "nanoDD fixture root {} has no case folder",
        root.display()
    );
    for case in &cases {
        for file in ["ckpt.pt", "cases.safetensors", "meta.json"] {
            assert!(
                case.join(file).is_file(),
                "fixture case {} has no {file}",
                case.display()
            );
        }
    }
    eprintln!(
        "nanoDD fixtures: {} ({} cases)",
        root.display(),
        cases.len()
    );
    cases
}

pub fn case_name(case: &Path) -> String {
    case.file_name().unwrap().to_string_lossy().into_owned()
}

/// The model folder `dir` (its one weight set), read and checked, and its network on `device`.
pub fn open_model<B: Backend>(dir: &Path, device: &B::Device) -> (SavedModel, LoadedModel<B>) {
    let weights = checkpoint::read_model_info(dir)
        .expect("a model folder")
        .weights;
    let saved = checkpoint::open(dir, weights, CheckpointChoice::Latest).expect("open the model");
    let loaded = saved.load::<B>(device).expect("load the model");
    (saved, loaded)
}
