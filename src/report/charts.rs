//! The report's charts: per-group curves (mean over runs with a band from the lowest to the
//! highest) and per-run bits/token with error bars.

use std::collections::BTreeMap;

use super::compare::Group;
use super::discover::{Final, Run};
use crate::results::plot::{
    Band, ErrorBarChart, ErrorBarPanel, LineChart, Series, YScale, group_style,
};
use crate::results::stats::{rolling_mean, rolling_std};

pub(super) enum Chart {
    Lines(LineChart),
    ErrorBars(ErrorBarChart),
}

/// One run's curve for a chart: (iteration, x, y).
type Curve = Vec<(u64, f64, f64)>;

/// Mean over curves at the keys (iterations) all of them have: (mean x, mean y, min y, max y).
pub(super) fn align(curves: &[Curve]) -> Vec<(f64, f64, f64, f64)> {
    let Some(first) = curves.first() else {
        return Vec::new();
    };
    let maps: Vec<BTreeMap<u64, (f64, f64)>> = curves
        .iter()
        .map(|c| c.iter().map(|&(k, x, y)| (k, (x, y))).collect())
        .collect();
    first
        .iter()
        .filter_map(|&(k, _, _)| {
            let points: Option<Vec<(f64, f64)>> = maps.iter().map(|m| m.get(&k).copied()).collect();
            let points = points?;
            let n = points.len() as f64;
            let x = points.iter().map(|p| p.0).sum::<f64>() / n;
            let ys = points.iter().map(|p| p.1);
            let mean = ys.clone().sum::<f64>() / n;
            let lo = ys.clone().fold(f64::INFINITY, f64::min);
            let hi = ys.fold(f64::NEG_INFINITY, f64::max);
            Some((x, mean, lo, hi))
        })
        .collect()
}

/// A chart with one mean curve and band per group, from a per-run curve function.
pub(super) fn group_chart(
    runs: &[Run],
    groups: &[Group],
    title: &str,
    x_label: &str,
    y_label: &str,
    y_scale: YScale,
    curve: &dyn Fn(&Run) -> Curve,
) -> LineChart {
    let mut chart = LineChart {
        title: title.into(),
        x_label: x_label.into(),
        y_label: y_label.into(),
        y_scale,
        secondary_x: None,
        bands: Vec::new(),
        series: Vec::new(),
        notes: Vec::new(),
    };
    for (g, group) in groups.iter().enumerate() {
        let curves: Vec<_> = group
            .members
            .iter()
            .map(|&i| curve(&runs[i]))
            .filter(|c| !c.is_empty())
            .collect();
        let aligned = align(&curves);
        if aligned.is_empty() {
            chart.notes.push(format!(
                "group `{}`: no data for this chart",
                short(&group.label)
            ));
            continue;
        }
        let longest = curves
            .iter()
            .map(|c| c.last().map_or(0, |p| p.0))
            .max()
            .unwrap_or(0);
        if curves.iter().any(|c| c.len() != aligned.len()) {
            chart.notes.push(format!(
                "group `{}`: drawn where all {} runs have data ({} points; the longest run reaches iteration {longest})",
                short(&group.label),
                curves.len(),
                aligned.len()
            ));
        }
        let mut style = group_style(g);
        style.marker_every = aligned.len().div_ceil(12).max(1);
        if curves.len() >= 2 {
            chart.bands.push(Band {
                points: aligned.iter().map(|p| (p.0, p.2, p.3)).collect(),
                color: style.color,
            });
        }
        chart.series.push(Series {
            label: Some(format!(
                "{} ({} run{})",
                short(&group.label),
                curves.len(),
                if curves.len() == 1 { "" } else { "s" }
            )),
            points: aligned.iter().map(|p| (p.0, p.1)).collect(),
            style,
            markers_only: false,
        });
    }
    chart
}

/// Labels in charts stay on one line.
pub(super) fn short(label: &str) -> String {
    if label.chars().count() <= 60 {
        label.to_string()
    } else {
        label.chars().take(57).collect::<String>() + "..."
    }
}

pub(super) fn charts(runs: &[Run], groups: &[Group], w: usize) -> Vec<(&'static str, Chart)> {
    let finite_losses = |run: &Run| -> Vec<(u64, f64)> {
        run.train
            .iter()
            .filter(|r| r.loss.is_finite())
            .map(|r| (r.iter, r.loss))
            .collect()
    };
    let smoothed = |run: &Run| {
        let pts = finite_losses(run);
        let ys: Vec<f64> = pts.iter().map(|p| p.1).collect();
        pts.iter()
            .zip(rolling_mean(&ys, w))
            .filter_map(|(p, m)| m.map(|m| (p.0, p.0 as f64, m)))
            .collect()
    };
    let noise = |run: &Run| {
        let pts = finite_losses(run);
        let ys: Vec<f64> = pts.iter().map(|p| p.1).collect();
        pts.iter()
            .zip(rolling_std(&ys, w))
            .filter_map(|(p, s)| s.map(|s| (p.0, p.0 as f64, s)))
            .collect()
    };
    let val_by_iter = |run: &Run| {
        run.val
            .iter()
            .filter(|r| r.bits_per_token.is_finite())
            .map(|r| (r.iter, r.iter as f64, r.bits_per_token))
            .collect()
    };
    let val_by_tokens = |run: &Run| {
        run.val
            .iter()
            .filter(|r| r.bits_per_token.is_finite())
            .map(|r| (r.iter, r.tokens as f64, r.bits_per_token))
            .collect()
    };
    let iteration = "iteration (optimiser steps)";
    let mut charts = vec![
        (
            "train_loss",
            Chart::Lines(group_chart(
                runs,
                groups,
                "Train loss (smoothed), mean over seeds",
                iteration,
                &format!("train loss per token (nats), centred mean of {w} logged steps"),
                YScale::Auto,
                &smoothed,
            )),
        ),
        (
            "val_bits_vs_iter",
            Chart::Lines(group_chart(
                runs,
                groups,
                "Validation bits/token, mean over seeds",
                iteration,
                "val bits/token",
                YScale::Auto,
                &val_by_iter,
            )),
        ),
        (
            "val_bits_vs_tokens",
            Chart::Lines(group_chart(
                runs,
                groups,
                "Validation bits/token against training tokens",
                "training tokens seen",
                "val bits/token",
                YScale::Auto,
                &val_by_tokens,
            )),
        ),
        (
            "loss_noise",
            Chart::Lines(group_chart(
                runs,
                groups,
                "Loss noise: rolling standard deviation of the train loss",
                iteration,
                &format!("std of train loss over {w} logged steps (nats)"),
                YScale::Auto,
                &noise,
            )),
        ),
    ];

    let order: Vec<usize> = groups
        .iter()
        .flat_map(|g| g.members.iter().copied())
        .collect();
    let group_of: BTreeMap<usize, usize> = groups
        .iter()
        .enumerate()
        .flat_map(|(g, grp)| grp.members.iter().map(move |&i| (i, g)))
        .collect();
    let panel = |title: &str, f: &dyn Fn(&Run) -> Option<Final>| ErrorBarPanel {
        title: title.into(),
        items: order
            .iter()
            .enumerate()
            .filter_map(|(x, &i)| f(&runs[i]).map(|v| (x, group_of[&i], v.bits, v.se)))
            .collect(),
    };
    let mut panels = vec![
        panel("val", &|r| r.val_final),
        panel("test", &|r| r.test_final),
    ];
    let mut notes = Vec::new();
    panels.retain(|p| {
        if p.items.is_empty() {
            notes.push(format!("no run has a final {} bits/token yet", p.title));
        }
        !p.items.is_empty()
    });
    charts.push((
        "final_bits",
        Chart::ErrorBars(ErrorBarChart {
            title: "Final bits/token per run (error bars: the evaluation's standard error; dashed: group mean)".into(),
            y_label: "bits/token".into(),
            item_labels: order.iter().map(|&i| format!("seed {}", runs[i].experiment.seed)).collect(),
            groups: groups.iter().map(|g| short(&g.label)).collect(),
            panels,
            notes,
        }),
    ));
    charts
}
