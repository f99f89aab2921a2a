//! Where the nanoDD fixtures are, and opening a model folder.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use ddexp::checkpoint::{self, CheckpointChoice, LoadedModel, SavedModel};

/// The fixture root: `DDEXP_NANODD_FIXTURES` if set; else `../shared/fixtures/nanodd` next
/// to the crate if it exists; else the copy vendored in `tests/fixtures/nanodd` (what a clean
/// clone and CI use).
pub fn fixture_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    match std::env::var_os("DDEXP_NANODD_FIXTURES") {
        Some(root) => PathBuf::from(root),
        None => {
            let shared = manifest.join("../shared/fixtures/nanodd");
            if shared.is_dir() {
                shared
            } else {
                manifest.join("tests/fixtures/nanodd")
            }
        }
    }
}

/// Every case folder under the fixture root. Panics — the tests fail, they do not skip —
/// when the root is missing or holds no case, and when a case lacks one of its files.
pub fn fixture_cases() -> Vec<PathBuf> {
    let root = fixture_root();
    let cases = ddexp::parity::fixture_cases(&root)
        .unwrap_or_else(|e| panic!("{e:#} (set DDEXP_NANODD_FIXTURES)"));
    eprintln!(
        "nanoDD fixtures: {} ({} cases)",
        root.display(),
        cases.len()
    );
    cases
}

pub fn case_name(case: &Path) -> String {
    ddexp::parity::case_name(case)
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
