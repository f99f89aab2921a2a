//! report.md: the tables, findings, notes and charts, and how every number is defined.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::ReportOptions;
use super::charts::Chart;
use super::compare::{Group, GroupSummaryRow, MemberSummaryRow};
use super::discover::Run;
use super::numbers::{num, pm_opt};
use crate::results::now;

/// How every number in the report is defined (printed in report.md; also docs/report.md).
pub const DEFINITIONS: &str = "\
- **Groups.** Runs whose resolved experiments (experiment.ron) are identical once `name` and `seed` \
are removed form a group. A group is named by the experiment fields whose values differ between \
groups; the baseline is the first group (or the one `--baseline` names).
- **mean ± s.e.** Over the runs of a group: the mean and the standard error of the mean, \
s.e. = sample standard deviation (divisor n − 1) / √n. Differences between groups have \
s.e. = √(s.e.₁² + s.e.₂²); ratios a/b have s.e. = (a/b)·√((s.e.ₐ/a)² + (s.e._b/b)²) (first-order \
propagation, groups independent). \"Clearly\" lower or higher means more than 2 s.e. apart; with \
a handful of seeds this is a rough guide, not a significance test.
- **Final bits/token.** From eval.csv (the final evaluation, EMA weights preferred; the last \
row per split). Its error bar in the per-run chart is the evaluation's own standard error. A \
run without a final val evaluation uses the last row of val.csv (marked `val.csv`).
- **Loss noise (nats/token).** For each run, take the train loss as logged in train.csv (one \
value per log interval; non-finite values left out) as x₁ … xₙ. For each point i whose centred \
window of W logged points (i − h … i + h, W = 2h + 1) fits in the series, s_i is the sample \
standard deviation (divisor W − 1) of the window's values around their own mean: the rolling \
standard deviation. The run's loss noise is the mean of s_i over the points of the second half \
(0-based i ≥ ⌊n/2⌋), where the loss changes slowly compared with the window. Groups are compared \
by mean ± s.e. over their runs and by the ratio to the baseline group. Runs must log at the \
same interval for their noise to be comparable.
- **Final train loss.** Mean of the last W logged train losses of a run.
- **Charts.** Each group's curve is the mean over its runs at the iterations all of them \
logged; the shaded band spans the lowest to the highest run. Train losses are smoothed with a \
centred rolling mean of W logged points (the window shrinks symmetrically at the ends, to no fewer than W/4 points on each side); the loss-noise chart shows the rolling standard \
deviation s_i.";

#[allow(clippy::too_many_arguments)]
pub(super) fn markdown(
    opts: &ReportOptions,
    runs: &[Run],
    groups: &[Group],
    summary: &[GroupSummaryRow],
    members: &[MemberSummaryRow],
    findings: &[String],
    notes: &[String],
    charts: &[(&str, Chart)],
) -> String {
    let mut md = String::new();
    let inputs = if opts.inputs.is_empty() {
        format!("everything under `{}`", opts.results_root.display())
    } else {
        opts.inputs
            .iter()
            .map(|i| format!("`{i}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(md, "# ddexp report\n");
    let _ = writeln!(
        md,
        "{} runs in {} groups, from {inputs}. Written {} by ddexp {}; rolling window W = {} logged points. \
         Numbers are mean ± standard error over the runs (seeds) of a group; definitions at the end.\n",
        runs.len(),
        groups.len(),
        now(),
        env!("CARGO_PKG_VERSION"),
        opts.window
    );

    let _ = writeln!(md, "## Summary\n");
    let _ = writeln!(
        md,
        "| group | runs | final val bits/token | final test bits/token | loss noise (nats/token) | noise ratio to baseline | final train loss (nats) | tokens/s |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for s in summary {
        let name = if s.baseline {
            format!("`{}` (baseline)", s.label)
        } else {
            format!("`{}`", s.label)
        };
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {} | {} | {} |",
            s.runs,
            pm_opt(s.val_bits, s.val_bits_se),
            pm_opt(s.test_bits, s.test_bits_se),
            pm_opt(s.noise, s.noise_se),
            pm_opt(s.noise_ratio, s.noise_ratio_se),
            pm_opt(s.final_train_loss, s.final_train_loss_se),
            s.tokens_per_s.map_or("–".into(), |v| format!("{v:.0}")),
        );
    }
    if !findings.is_empty() {
        let _ = writeln!(
            md,
            "\n**Compared with the baseline `{}`:**\n",
            summary[0].label
        );
        for f in findings {
            let _ = writeln!(md, "- {f}");
        }
    }

    let _ = writeln!(md, "\n## Charts\n");
    for (stem, chart) in charts {
        let title = match chart {
            Chart::Lines(c) => &c.title,
            Chart::ErrorBars(c) => &c.title,
        };
        let _ = writeln!(
            md,
            "### {title}\n\n![{title}]({stem}.png)\n\n[SVG]({stem}.svg)\n"
        );
    }

    let _ = writeln!(md, "## Groups\n");
    for (g, group) in groups.iter().enumerate() {
        let s = &summary[g];
        let _ = writeln!(
            md,
            "### {}. `{}`{}\n",
            g + 1,
            group.label,
            if g == 0 { " (baseline)" } else { "" }
        );
        let experiments: BTreeSet<&str> = group
            .members
            .iter()
            .map(|&i| runs[i].experiment.name.as_str())
            .collect();
        let _ = writeln!(
            md,
            "Experiment name(s): {}.",
            experiments
                .iter()
                .map(|e| format!("`{e}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if !group.fields.is_empty() {
            let fields = group
                .fields
                .iter()
                .map(|(p, v)| format!("`{p}` = `{v}`"))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(md, "Differs from the other groups in: {fields}.");
        }
        let _ = writeln!(
            md,
            "\n| run | seed | status | iterations | final val bits/token | final test bits/token | loss noise | final train loss | tokens/s |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
        for m in members.iter().filter(|m| m.group == g + 1) {
            let source = if m.val_source == "val.csv" {
                " (val.csv)"
            } else {
                ""
            };
            let _ = writeln!(
                md,
                "| `{}` | {} | {} | {} | {}{source} | {} | {} | {} | {} |",
                m.run,
                m.seed,
                m.status,
                m.iters,
                pm_opt(m.val_bits, m.val_se),
                pm_opt(m.test_bits, m.test_se),
                num(m.noise),
                num(m.final_train_loss),
                m.tokens_per_s.map_or("–".into(), |v| format!("{v:.0}")),
            );
        }
        let _ = writeln!(
            md,
            "| **mean ± s.e.** | {} | | {} | {} | {} | {} | {} | {} |\n",
            s.seeds,
            s.iters,
            pm_opt(s.val_bits, s.val_bits_se),
            pm_opt(s.test_bits, s.test_bits_se),
            pm_opt(s.noise, s.noise_se),
            pm_opt(s.final_train_loss, s.final_train_loss_se),
            s.tokens_per_s.map_or("–".into(), |v| format!("{v:.0}")),
        );
    }

    let _ = writeln!(md, "## Definitions\n\n{DEFINITIONS}\n");
    let _ = writeln!(
        md,
        "Files: `summary.csv` (one row per group), `members.csv` (one row per run), and each chart as PNG and SVG.\n"
    );
    if !notes.is_empty() {
        let _ = writeln!(md, "## Notes\n");
        for n in notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    md
}
