//! Shared by the integration tests: where the nanoDD fixtures are.

use std::path::{Path, PathBuf};

/// The fixture root: `DDEXP_NANODD_FIXTURES` if set; else `../shared/fixtures/nanodd` next
/// to the crate if it exists; else the copy vendored in `tests/fixtures/nanodd` (what a clean
/// clone and CI use). Panics — the tests fail, they do not skip — when the root is missing
/// or holds no case folder.
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
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", root.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.join("ckpt.pt").is_file() && path.join("cases.safetensors").is_file())
        .collect();
    cases.sort();
    assert!(
        !cases.is_empty(),
        "nanoDD fixture root {} has no case folder (a folder with ckpt.pt and cases.safetensors)",
        root.display()
    );
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
