//! `results/sweeps/<sweep name>/summary.csv`: one row per member of a sweep. `ddexp sweep`
//! writes it (rewriting the whole file atomically as members progress) and `ddexp report`
//! reads it to find the members' run folders.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::csv_log::CsvRow;

/// Where a sweep member stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberStatus {
    /// Not started (no run folder yet).
    Pending,
    Running,
    Completed,
    Failed,
    Interrupted,
}

/// One member of a sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepMemberRow {
    /// The member's name (its experiment file's stem, or the grid point's name).
    pub member: String,
    /// Its run folder: relative to the folder holding summary.csv, or absolute; empty while
    /// the member is pending.
    pub run_dir: String,
    pub status: MemberStatus,
    /// Final bits/token on val and test (eval.csv, EMA weights) with standard errors.
    pub val_bits: Option<f64>,
    pub val_se: Option<f64>,
    pub test_bits: Option<f64>,
    pub test_se: Option<f64>,
    /// Wall time of the member's run in seconds (all attempts together).
    pub wall_s: Option<f64>,
    /// Median training throughput.
    pub tokens_per_s: Option<f64>,
    /// Why the member failed (status `failed`).
    pub error: Option<String>,
}

impl CsvRow for SweepMemberRow {
    const FILE: &'static str = "summary.csv";
    const HEADER: &'static [&'static str] = &[
        "member",
        "run_dir",
        "status",
        "val_bits",
        "val_se",
        "test_bits",
        "test_se",
        "wall_s",
        "tokens_per_s",
        "error",
    ];
}

impl SweepMemberRow {
    /// The row of a member that has not run yet.
    pub fn pending(member: &str) -> SweepMemberRow {
        SweepMemberRow {
            member: member.to_string(),
            run_dir: String::new(),
            status: MemberStatus::Pending,
            val_bits: None,
            val_se: None,
            test_bits: None,
            test_se: None,
            wall_s: None,
            tokens_per_s: None,
            error: None,
        }
    }

    /// The run folder, resolved against the sweep folder (`..` removed lexically: the sweep
    /// and results folders are plain folders); `None` while pending.
    pub fn run_path(&self, sweep_dir: &Path) -> Option<PathBuf> {
        if self.run_dir.is_empty() {
            return None;
        }
        let mut path = PathBuf::new();
        for part in sweep_dir.join(&self.run_dir).components() {
            match part {
                Component::CurDir => {}
                Component::ParentDir
                    if matches!(path.components().next_back(), Some(Component::Normal(_))) =>
                {
                    path.pop();
                }
                other => path.push(other),
            }
        }
        Some(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::csv_log::{read_rows, write_rows};

    #[test]
    fn summary_rows_round_trip_with_empty_optional_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SweepMemberRow::FILE);
        let rows = vec![
            SweepMemberRow {
                member: "uniform_s1".into(),
                run_dir: "../../tiny/2026-01-01T00-00-00".into(),
                status: MemberStatus::Completed,
                val_bits: Some(1.5),
                val_se: Some(0.01),
                test_bits: Some(1.6),
                test_se: Some(0.02),
                wall_s: Some(61.5),
                tokens_per_s: Some(12000.0),
                error: None,
            },
            SweepMemberRow {
                error: Some("non-finite loss, at iteration 3".into()),
                ..SweepMemberRow::pending("lds_s1")
            },
        ];
        write_rows(&path, &rows).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(&SweepMemberRow::HEADER.join(",")));
        assert!(
            text.contains("lds_s1,,pending,,,,,,,\"non-finite loss, at iteration 3\""),
            "{text}"
        );
        assert_eq!(read_rows::<SweepMemberRow>(&path).unwrap(), rows);
        assert_eq!(
            rows[0].run_path(Path::new("results/sweeps/x")),
            Some(PathBuf::from("results/tiny/2026-01-01T00-00-00"))
        );
        assert_eq!(rows[1].run_path(Path::new("results/sweeps/x")), None);
        let up = SweepMemberRow {
            run_dir: "../../../../elsewhere/run".into(),
            ..rows[0].clone()
        };
        assert_eq!(
            up.run_path(Path::new("results/sweeps/x")),
            Some(PathBuf::from("../elsewhere/run"))
        );
    }
}
