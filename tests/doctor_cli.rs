//! `ddexp doctor` on the backend every build has: the listing, the self-check against flex,
//! and the refusal of a backend this binary was built without.

mod common;

use common::cli::{ddexp, text};

#[test]
fn the_cpu_check_lists_every_backend_and_passes() {
    let dir = tempfile::tempdir().unwrap();
    let out = ddexp(&["doctor", "--backend", "cpu", "--probe", "0"], dir.path());
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    for backend in ["cpu", "cuda", "libtorch", "libtorch-cuda", "wgpu"] {
        assert!(
            said.lines().any(|l| l.trim_start().starts_with(backend)),
            "{backend} is not listed:\n{said}"
        );
    }
    for check in ["logits", "loss", "gradients", "AdamW moments"] {
        assert!(said.contains(check), "{check} is not checked:\n{said}");
    }
    assert!(said.trim_end().ends_with("passed"), "{said}");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn a_backend_not_built_in_is_an_error_that_says_how_to_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let out = ddexp(&["doctor", "--backend", "cuda", "--probe", "0"], dir.path());
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("--features cuda"), "{said}");
}
