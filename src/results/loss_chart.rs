//! The loss chart of one run, `loss.png` and `loss.svg`: the train loss as logged (thin, light),
//! its centred rolling mean (bold, dark) and the validation loss (dashed, with markers), per
//! token in nats, against the iteration (and tokens seen along the top).

use std::path::Path;

use anyhow::Result;
use plotters::style::RGBColor;

use super::csv_log::{LogRow, TrainRow, ValRow, read_rows};
use super::plot::{self, Dash, LineChart, LineStyle, Marker, SecondaryX, Series, YScale};
use super::stats::rolling_mean;
use crate::model::WeightSet;

/// Redraws `<dir>/loss.png` and `<dir>/loss.svg` from the run's train.csv and val.csv (either
/// may be missing or empty). Returns the notes printed under the chart.
pub fn draw_run_loss_chart(dir: &Path, title: &str) -> Result<Vec<String>> {
    let train = read_if_present::<TrainRow>(dir)?;
    let val = read_if_present::<ValRow>(dir)?;
    let chart = loss_chart(title, &train, &val);
    plot::save(&chart, &dir.join("loss"), (1100, 650))?;
    Ok(chart.notes)
}

fn read_if_present<R: LogRow>(dir: &Path) -> Result<Vec<R>> {
    let path = dir.join(R::FILE);
    if path.exists() {
        read_rows(&path)
    } else {
        Ok(Vec::new())
    }
}

/// Points of the rolling mean for n logged points: about 1/25 of the run, odd, 1 to 201.
pub fn smoothing_window(n: usize) -> usize {
    (n / 25).clamp(1, 201) | 1
}

/// Describes the chart; non-finite losses are left out and counted in the notes.
pub fn loss_chart(title: &str, train: &[TrainRow], val: &[ValRow]) -> LineChart {
    let mut notes = Vec::new();
    let train_points = finite_points(
        train.iter().map(|r| (r.iter, r.loss)),
        "train loss",
        &mut notes,
    );
    let val_points = finite_points(val.iter().map(|r| (r.iter, r.loss)), "val loss", &mut notes);
    if train.is_empty() {
        notes.push("no rows in train.csv yet".into());
    }
    if val.is_empty() {
        notes.push("no validation yet (val.csv has no rows)".into());
    }

    let mut series = Vec::new();
    let window = smoothing_window(train_points.len());
    series.push(Series {
        label: Some("train loss (each logged step)".into()),
        points: train_points.clone(),
        style: LineStyle {
            // A handful of points (or a single one, which draws no line) get markers.
            marker: (train_points.len() <= 30).then_some(Marker::Circle),
            ..LineStyle::solid(RGBColor(120, 145, 190), 1)
        },
        markers_only: false,
    });
    if window > 1 {
        let ys: Vec<f64> = train_points.iter().map(|p| p.1).collect();
        let smooth = rolling_mean(&ys, window);
        series.push(Series {
            label: Some(format!("train loss, centred mean of {window} logged steps")),
            points: train_points
                .iter()
                .zip(smooth)
                .filter_map(|(p, m)| m.map(|m| (p.0, m)))
                .collect(),
            style: LineStyle::solid(RGBColor(0, 45, 114), 3),
            markers_only: false,
        });
    }
    if !val_points.is_empty() {
        let weights = val.last().map_or("", |r| match r.weights {
            WeightSet::Ema => ", EMA weights",
            WeightSet::Model => "",
        });
        series.push(Series {
            label: Some(format!("val loss{weights}")),
            points: val_points,
            style: LineStyle {
                color: RGBColor(213, 94, 0),
                width: 2,
                dash: Dash::Dashed,
                marker: Some(Marker::Circle),
                marker_every: val.len().div_ceil(60).max(1),
            },
            markers_only: false,
        });
    }

    let title = match val.iter().rev().find(|r| r.bits_per_token.is_finite()) {
        Some(last) => format!(
            "{title}: val {:.4} bits/token at iteration {}",
            last.bits_per_token, last.iter
        ),
        None => title.to_string(),
    };
    LineChart {
        title,
        x_label: "iteration (optimiser steps)".into(),
        y_label: "loss per token (nats): KL + λ·CE".into(),
        y_scale: YScale::Auto,
        secondary_x: tokens_per_iter(train).map(|scale| SecondaryX {
            label: "tokens seen".into(),
            scale,
        }),
        bands: Vec::new(),
        series,
        notes,
    }
}

/// Keeps the finite (iteration, value) pairs and notes how many were skipped.
pub fn finite_points(
    rows: impl Iterator<Item = (u64, f64)>,
    what: &str,
    notes: &mut Vec<String>,
) -> Vec<(f64, f64)> {
    let (mut kept, mut skipped) = (Vec::new(), 0);
    for (iter, v) in rows {
        if v.is_finite() {
            kept.push((iter as f64, v));
        } else {
            skipped += 1;
        }
    }
    if skipped > 0 {
        notes.push(format!(
            "{skipped} non-finite {what} value(s) (NaN or infinite) not drawn"
        ));
    }
    kept
}

/// Tokens per iteration when every row agrees on it (it is constant within a run), so that
/// tokens seen can label a second x axis.
fn tokens_per_iter(train: &[TrainRow]) -> Option<f64> {
    let last = train.iter().rev().find(|r| r.iter > 0)?;
    let per_iter = last.tokens as f64 / last.iter as f64;
    let consistent = train.iter().all(|r| {
        (r.tokens as f64 - r.iter as f64 * per_iter).abs() <= 0.5 + 1e-9 * r.tokens as f64
    });
    (per_iter > 0.0 && consistent).then_some(per_iter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::test_support::{assert_png, assert_svg};

    fn rows(n: u64, every: u64) -> Vec<TrainRow> {
        (1..=n)
            .map(|i| TrainRow {
                iter: i * every,
                tokens: i * every * 4096,
                loss: 3.0 / (1.0 + 0.01 * i as f64) + 0.1 * ((i * 7919 % 13) as f64 / 13.0),
                ..TrainRow::default()
            })
            .collect()
    }

    #[test]
    fn a_full_chart_renders_to_png_and_svg() {
        let dir = tempfile::tempdir().unwrap();
        let train = rows(400, 10);
        let val: Vec<ValRow> = (1..=4)
            .map(|i| ValRow {
                iter: i * 1000,
                tokens: i * 1000 * 4096,
                loss: 2.5 - 0.1 * i as f64,
                bits_per_token: 1.5,
                ..ValRow::default()
            })
            .collect();
        crate::results::csv_log::write_rows(&dir.path().join("train.csv"), &train).unwrap();
        crate::results::csv_log::write_rows(&dir.path().join("val.csv"), &val).unwrap();
        let notes = draw_run_loss_chart(dir.path(), "tiny / 2026-01-01T00-00-00").unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        assert_png(&dir.path().join("loss.png"), (1100, 650));
        let svg = assert_svg(&dir.path().join("loss.svg"));
        for text in [
            "tiny / 2026-01-01T00-00-00: val 1.5000 bits/token at iteration 4000",
            "tokens seen",
            "loss per token (nats)",
            "val loss, EMA weights",
        ] {
            assert!(svg.contains(text), "missing {text:?}");
        }
        // Only the two charts: no temporary files left behind.
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["loss.png", "loss.svg", "train.csv", "val.csv"]);
    }

    #[test]
    fn edge_cases_render_and_say_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        // No CSV files at all.
        let notes = draw_run_loss_chart(dir.path(), "empty").unwrap();
        assert!(notes.iter().any(|n| n.contains("no rows in train.csv")));
        assert_png(&dir.path().join("loss.png"), (1100, 650));

        // One point, no validation.
        let chart = loss_chart("one", &rows(1, 1), &[]);
        plot::save(&chart, &dir.path().join("one"), (600, 400)).unwrap();
        assert_png(&dir.path().join("one.png"), (600, 400));
        assert!(chart.notes.iter().any(|n| n.contains("no validation yet")));

        // NaN and infinite losses and a huge iteration count.
        let mut train = rows(50, 10_000_000_000);
        train[3].loss = f64::NAN;
        train[7].loss = f64::INFINITY;
        let chart = loss_chart(
            "huge",
            &train,
            &[ValRow {
                iter: 5,
                loss: f64::NAN,
                ..ValRow::default()
            }],
        );
        assert!(
            chart
                .notes
                .iter()
                .any(|n| n == "2 non-finite train loss value(s) (NaN or infinite) not drawn"),
            "{:?}",
            chart.notes
        );
        assert!(
            chart
                .notes
                .iter()
                .any(|n| n.starts_with("1 non-finite val loss"))
        );
        plot::save(&chart, &dir.path().join("huge"), (800, 500)).unwrap();
        let svg = assert_svg(&dir.path().join("huge.svg"));
        assert!(svg.contains("non-finite train loss"));
        assert!(
            svg.contains("500B"),
            "x labels use a suffix for huge iteration counts"
        );
    }
}
