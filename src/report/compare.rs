//! Grouping runs into configurations, the statistics of each group against the baseline
//! group, and the findings in words.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::discover::Run;
use super::numbers::pm;
use crate::results::stats::{difference_se, mean_se, ratio_se};
use crate::results::{CsvRow, RunStatus};

/// One row of the report's `summary.csv`: a group, with mean ± standard error over its runs
/// and its comparison with the baseline group. Empty fields: not available (e.g. a standard
/// error from a single run, or test bits/token before the final evaluation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupSummaryRow {
    /// 1-based, in report order.
    pub group: usize,
    pub label: String,
    pub baseline: bool,
    pub runs: usize,
    /// The seeds of the runs, space-separated.
    pub seeds: String,
    /// Smallest last logged iteration among the runs.
    pub iters: u64,
    pub val_bits: Option<f64>,
    pub val_bits_se: Option<f64>,
    pub test_bits: Option<f64>,
    pub test_bits_se: Option<f64>,
    /// This group's mean minus the baseline's.
    pub val_delta: Option<f64>,
    pub val_delta_se: Option<f64>,
    pub test_delta: Option<f64>,
    pub test_delta_se: Option<f64>,
    /// Loss noise in nats/token.
    pub noise: Option<f64>,
    pub noise_se: Option<f64>,
    /// This group's mean loss noise divided by the baseline's.
    pub noise_ratio: Option<f64>,
    pub noise_ratio_se: Option<f64>,
    pub final_train_loss: Option<f64>,
    pub final_train_loss_se: Option<f64>,
    pub tokens_per_s: Option<f64>,
    /// The rolling window W used for the noise and the smoothing.
    pub window: usize,
}

impl CsvRow for GroupSummaryRow {
    const FILE: &'static str = "summary.csv";
    const HEADER: &'static [&'static str] = &[
        "group",
        "label",
        "baseline",
        "runs",
        "seeds",
        "iters",
        "val_bits",
        "val_bits_se",
        "test_bits",
        "test_bits_se",
        "val_delta",
        "val_delta_se",
        "test_delta",
        "test_delta_se",
        "noise",
        "noise_se",
        "noise_ratio",
        "noise_ratio_se",
        "final_train_loss",
        "final_train_loss_se",
        "tokens_per_s",
        "window",
    ];
}

/// One row of the report's `members.csv`: one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberSummaryRow {
    pub group: usize,
    pub label: String,
    pub run: String,
    pub run_dir: String,
    pub seed: u64,
    pub status: RunStatus,
    pub iters: u64,
    pub val_bits: Option<f64>,
    pub val_se: Option<f64>,
    /// `eval.csv` (final evaluation) or `val.csv` (last validation, before the final one).
    pub val_source: String,
    pub test_bits: Option<f64>,
    pub test_se: Option<f64>,
    pub noise: Option<f64>,
    pub final_train_loss: Option<f64>,
    pub tokens_per_s: Option<f64>,
}

impl CsvRow for MemberSummaryRow {
    const FILE: &'static str = "members.csv";
    const HEADER: &'static [&'static str] = &[
        "group",
        "label",
        "run",
        "run_dir",
        "seed",
        "status",
        "iters",
        "val_bits",
        "val_se",
        "val_source",
        "test_bits",
        "test_se",
        "noise",
        "final_train_loss",
        "tokens_per_s",
    ];
}

#[derive(Debug)]
pub(super) struct Group {
    pub(super) label: String,
    /// The differing fields as (path, value).
    pub(super) fields: Vec<(String, String)>,
    /// Indices into the runs, ordered by seed.
    pub(super) members: Vec<usize>,
}

/// Groups runs by their experiment without name and seed, in order of first appearance, and
/// labels each group by the fields that differ between groups.
pub(super) fn group_runs(runs: &[Run]) -> Result<Vec<Group>> {
    let mut keys: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    let mut members: Vec<Vec<usize>> = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let mut value = serde_json::to_value(&run.experiment)?;
        if let Value::Object(map) = &mut value {
            map.remove("name");
            map.remove("seed");
        }
        let key = value.to_string();
        match keys.iter().position(|(k, _)| *k == key) {
            Some(g) => members[g].push(i),
            None => {
                let mut flat = BTreeMap::new();
                flatten("", &value, &mut flat);
                keys.push((key, flat));
                members.push(vec![i]);
            }
        }
    }
    let flats: Vec<BTreeMap<String, String>> = keys.into_iter().map(|(_, flat)| flat).collect();
    Ok(distinguishing_fields(&flats)
        .into_iter()
        .zip(members)
        .map(|(fields, mut members)| {
            members.sort_by_key(|&i| runs[i].experiment.seed);
            let label = if fields.is_empty() {
                let names: BTreeSet<&str> = members
                    .iter()
                    .map(|&i| runs[i].experiment.name.as_str())
                    .collect();
                names.into_iter().collect::<Vec<_>>().join(" + ")
            } else {
                fields
                    .iter()
                    .map(|(p, v)| format!("{p}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            Group {
                label,
                fields,
                members,
            }
        })
        .collect())
}

/// The fields that tell each group apart, from each group's flattened experiment: the paths
/// whose values differ between groups, where the group has them. Below an enum variant that
/// differs between groups (`model=Mdlm` against `model=D3pmAbsorbing`), a path is shown only
/// when it also differs among the groups of the same variant, so a label names the variant
/// and what varies within it rather than every field the other variants lack.
pub(super) fn distinguishing_fields(
    flats: &[BTreeMap<String, String>],
) -> Vec<Vec<(String, String)>> {
    let all_paths: BTreeSet<&String> = flats.iter().flat_map(BTreeMap::keys).collect();
    let differs = |path: &str, groups: &mut dyn Iterator<Item = &BTreeMap<String, String>>| {
        let mut values = groups.map(|flat| flat.get(path));
        let first = values.next();
        values.any(|v| Some(v) != first)
    };
    let differing: Vec<&String> = all_paths
        .into_iter()
        .filter(|p| differs(p, &mut flats.iter()))
        .collect();
    flats
        .iter()
        .map(|flat| {
            differing
                .iter()
                .filter_map(|&p| {
                    let value = flat.get(p)?;
                    let variant = differing
                        .iter()
                        .filter(|a| p.starts_with(&format!("{a}.")))
                        .max_by_key(|a| a.len());
                    let shown = match variant {
                        None => true,
                        Some(a) => differs(
                            p,
                            &mut flats.iter().filter(|other| other.get(*a) == flat.get(*a)),
                        ),
                    };
                    shown.then(|| (p.clone(), value.clone()))
                })
                .collect()
        })
        .collect()
}

/// Flattens JSON into dotted paths: `{"train": {"lr": 0.001}}` → `train.lr` = `0.001`. An
/// enum variant with fields, `{"model": {"Mdlm": {"eps": 0.001}}}`, becomes `model` = `Mdlm`
/// and `model.eps` = `0.001`.
pub(super) fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) if !prefix.is_empty() && map.len() == 1 => {
            let (key, inner) = map.iter().next().expect("one entry");
            if key.starts_with(|c: char| c.is_ascii_uppercase()) && inner.is_object() {
                out.insert(prefix.to_string(), key.clone());
                flatten(prefix, inner, out);
            } else {
                flatten(&format!("{prefix}.{key}"), inner, out);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&path, v, out);
            }
        }
        Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

pub(super) fn choose_baseline(groups: &[Group], wanted: Option<&str>) -> Result<usize> {
    let Some(wanted) = wanted else { return Ok(0) };
    let matches: Vec<usize> = (0..groups.len())
        .filter(|&g| groups[g].label.contains(wanted))
        .collect();
    match matches[..] {
        [g] => Ok(g),
        _ => bail!(
            "--baseline `{wanted}` matches {} groups; it must match exactly one of: {}",
            matches.len(),
            groups
                .iter()
                .map(|g| format!("`{}`", g.label))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

pub(super) fn summarise(
    runs: &[Run],
    groups: &[Group],
    window: usize,
) -> (Vec<GroupSummaryRow>, Vec<MemberSummaryRow>) {
    let mut summary: Vec<GroupSummaryRow> = Vec::new();
    let mut members = Vec::new();
    for (g, group) in groups.iter().enumerate() {
        let of = |f: &dyn Fn(&Run) -> Option<f64>| {
            let values: Vec<f64> = group.members.iter().filter_map(|&i| f(&runs[i])).collect();
            mean_se(&values)
        };
        // Final bits/token only of runs that finished: a stopped run's last validation is
        // another estimator at another iteration.
        let finished = |r: &Run| r.info.status == RunStatus::Completed;
        let val = of(&|r| r.val_final.filter(|_| finished(r)).map(|f| f.bits));
        let test = of(&|r| r.test_final.filter(|_| finished(r)).map(|f| f.bits));
        let noise = of(&|r| r.noise);
        let train_loss = of(&|r| r.final_train_loss);
        let speed = of(&|r| r.tokens_per_s);
        let base = summary.first();
        type Op = fn(f64, Option<f64>, f64, Option<f64>) -> (f64, Option<f64>);
        let compare = |mine: Option<(f64, Option<f64>)>,
                       theirs: (Option<f64>, Option<f64>),
                       op: Op| match (mine, theirs) {
            (Some((a, sa)), (Some(b), sb)) => {
                let (v, se) = op(a, sa, b, sb);
                (Some(v), se)
            }
            _ => (None, None),
        };
        // The baseline compared with itself: difference 0 and ratio 1, exactly.
        let exact = |mine: Option<(f64, Option<f64>)>, v: f64| (mine.map(|_| v), None);
        let ((val_delta, val_delta_se), (test_delta, test_delta_se), (noise_ratio, noise_ratio_se)) =
            match base {
                None => (exact(val, 0.0), exact(test, 0.0), exact(noise, 1.0)),
                Some(b) => (
                    compare(val, (b.val_bits, b.val_bits_se), difference_se),
                    compare(test, (b.test_bits, b.test_bits_se), difference_se),
                    compare(noise, (b.noise, b.noise_se), ratio_se),
                ),
            };
        summary.push(GroupSummaryRow {
            group: g + 1,
            label: group.label.clone(),
            baseline: g == 0,
            runs: group.members.len(),
            seeds: group
                .members
                .iter()
                .map(|&i| runs[i].experiment.seed.to_string())
                .collect::<Vec<_>>()
                .join(" "),
            iters: group
                .members
                .iter()
                .map(|&i| runs[i].iters)
                .min()
                .unwrap_or(0),
            val_bits: val.map(|m| m.0),
            val_bits_se: val.and_then(|m| m.1),
            test_bits: test.map(|m| m.0),
            test_bits_se: test.and_then(|m| m.1),
            val_delta,
            val_delta_se,
            test_delta,
            test_delta_se,
            noise: noise.map(|m| m.0),
            noise_se: noise.and_then(|m| m.1),
            noise_ratio,
            noise_ratio_se,
            final_train_loss: train_loss.map(|m| m.0),
            final_train_loss_se: train_loss.and_then(|m| m.1),
            tokens_per_s: speed.map(|m| m.0),
            window,
        });
        for &i in &group.members {
            let run = &runs[i];
            members.push(MemberSummaryRow {
                group: g + 1,
                label: group.label.clone(),
                run: run.name.clone(),
                run_dir: run.dir.display().to_string(),
                seed: run.experiment.seed,
                status: run.info.status,
                iters: run.iters,
                val_bits: run.val_final.map(|f| f.bits),
                val_se: run.val_final.and_then(|f| f.se),
                val_source: run.val_final.map_or("", |f| f.source).to_string(),
                test_bits: run.test_final.map(|f| f.bits),
                test_se: run.test_final.and_then(|f| f.se),
                noise: run.noise,
                final_train_loss: run.final_train_loss,
                tokens_per_s: run.tokens_per_s,
            });
        }
    }
    (summary, members)
}

/// The comparisons of each group with the baseline, in words.
pub(super) fn findings(summary: &[GroupSummaryRow]) -> Vec<String> {
    let Some(base) = summary.first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for g in &summary[1..] {
        let (a, b) = (&g.label, &base.label);
        if let (Some(ratio), Some(noise), Some(base_noise)) = (g.noise_ratio, g.noise, base.noise) {
            let (diff, diff_se) = difference_se(noise, g.noise_se, base_noise, base.noise_se);
            out.push(format!(
                "Loss noise of `{a}` relative to `{b}`: ratio {} ({}); difference {} nats/token.",
                pm(ratio, g.noise_ratio_se),
                verdict(diff, diff_se, "lower", "higher"),
                pm(diff, diff_se)
            ));
        }
        for (what, delta, delta_se) in [
            ("val", g.val_delta, g.val_delta_se),
            ("test", g.test_delta, g.test_delta_se),
        ] {
            if let Some(delta) = delta {
                out.push(format!(
                    "Final {what} bits/token of `{a}` minus `{b}`: {} ({}).",
                    pm(delta, delta_se),
                    verdict(delta, delta_se, "lower", "higher")
                ));
            }
        }
    }
    out
}

/// Whether a difference is more than 2 standard errors from zero.
pub(super) fn verdict(diff: f64, se: Option<f64>, below: &str, above: &str) -> String {
    match se {
        Some(se) if se > 0.0 => {
            let z = diff / se;
            if z <= -2.0 {
                format!("clearly {below}: {:.1} s.e. below", -z)
            } else if z >= 2.0 {
                format!("clearly {above}: {z:.1} s.e. above")
            } else {
                format!("no clear difference: within 2 s.e. ({z:+.1})")
            }
        }
        _ => "no error bar: needs at least 2 runs in each group".into(),
    }
}
