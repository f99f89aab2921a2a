//! Parity with the reference on flex: every fixture case under the fixture root (see
//! `common::fixtures::fixture_root`), both weight sets, every recorded tensor (see
//! `ddexp::parity`). The test prints a table per case and weight set and fails above
//! `ddexp::parity::THRESHOLD`.

mod common;

use ddexp::backend::Backend;

#[test]
fn every_fixture_case_matches_the_reference() {
    let report = ddexp::parity::check(&common::fixtures::fixture_root(), Backend::Cpu, 0).unwrap();
    let text = report.render();
    eprintln!("{text}");
    assert!(report.passed(), "parity with nanoDD failed:\n{text}");
}
