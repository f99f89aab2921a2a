//! Charts with plotters: a chart is described once (series, bands, axes, notes) and the same
//! drawing code renders it to PNG and to SVG, each written atomically.
//!
//! Text is drawn with DejaVu Sans, embedded in the binary and registered with plotters'
//! ab_glyph renderer, so no system font library is needed. Styles vary in lightness, dash and
//! marker as well as hue, so the charts stay readable in grayscale.

use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::element::{Drawable, PointCollection};
use plotters::prelude::*;
use plotters_backend::{BackendCoord, DrawingErrorKind};

use super::atomic::{finish, temp_path, write_atomic};

/// The font family every text element uses; DejaVu Sans is registered under this name.
const FONT: &str = "sans-serif";
static DEJAVU_SANS: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/assets/fonts/DejaVuSans.ttf"
));

/// Registers the embedded font with plotters (once per process).
fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if plotters::style::register_font(FONT, FontStyle::Normal, DEJAVU_SANS).is_err() {
            panic!("the embedded DejaVu Sans font (assets/fonts/DejaVuSans.ttf) does not parse");
        }
    });
}

/// Something that draws itself on any plotters backend.
pub trait Drawing {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static;
}

/// Writes `<stem>.png` and `<stem>.svg` (each to a temporary name, then renamed) and returns
/// their paths.
pub fn save(drawing: &impl Drawing, stem: &Path, size: (u32, u32)) -> Result<[PathBuf; 2]> {
    register_font();
    let with_ext = |ext: &str| {
        let mut name = stem.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".{ext}"));
        stem.with_file_name(name)
    };
    let (png, svg) = (with_ext("png"), with_ext("svg"));

    let tmp = temp_path(&png);
    let drawn = {
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        drawing.draw(&root).and_then(|()| {
            root.present()
                .map_err(|e| anyhow!("cannot encode {}: {e}", png.display()))
        })
    };
    if let Err(err) = drawn {
        let _ = fs::remove_file(&tmp);
        return Err(err);
    }
    finish(&tmp, &png, Ok(()))?;

    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, size).into_drawing_area();
        drawing.draw(&root)?;
        root.present()
            .map_err(|e| anyhow!("cannot render {}: {e}", svg.display()))?;
    }
    write_atomic(&svg, text.as_bytes())?;
    Ok([png, svg])
}

/// Line pattern of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dash {
    Solid,
    Dashed,
    Dotted,
}

/// Point marker of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    Circle,
    Triangle,
    Square,
    Cross,
}

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LineStyle {
    pub color: RGBColor,
    pub width: u32,
    pub dash: Dash,
    pub marker: Option<Marker>,
    /// Draw a marker on every n-th point (markers identify a line in grayscale; they need not
    /// sit on every point of a long curve).
    pub marker_every: usize,
}

impl LineStyle {
    pub fn solid(color: RGBColor, width: u32) -> LineStyle {
        LineStyle {
            color,
            width,
            dash: Dash::Solid,
            marker: None,
            marker_every: 1,
        }
    }
}

/// The style of the i-th group of a comparison: hue, lightness, dash and marker all change
/// from one group to the next.
pub fn group_style(i: usize) -> LineStyle {
    const PALETTE: [(RGBColor, Dash, Marker); 5] = [
        (RGBColor(0, 45, 114), Dash::Solid, Marker::Circle),
        (RGBColor(230, 97, 0), Dash::Dashed, Marker::Triangle),
        (RGBColor(86, 180, 233), Dash::Dotted, Marker::Square),
        (RGBColor(120, 28, 109), Dash::Dashed, Marker::Cross),
        (RGBColor(0, 140, 90), Dash::Solid, Marker::Triangle),
    ];
    let (color, dash, marker) = PALETTE[i % PALETTE.len()];
    LineStyle {
        color,
        width: 2,
        dash,
        marker: Some(marker),
        marker_every: 1,
    }
}

/// One curve. Non-finite points must be removed by the caller (who says so in the notes).
#[derive(Debug, Clone)]
pub struct Series {
    pub label: Option<String>,
    pub points: Vec<(f64, f64)>,
    pub style: LineStyle,
    /// Draw only the markers, no line.
    pub markers_only: bool,
}

/// A shaded area between a lower and an upper curve: `(x, lower, upper)`.
#[derive(Debug, Clone)]
pub struct Band {
    pub points: Vec<(f64, f64, f64)>,
    pub color: RGBColor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YScale {
    Linear,
    /// Logarithmic when all values are positive and span a factor of 4 or more.
    Auto,
}

/// A second x axis along the top, a linear function of the first (tokens seen = iterations ×
/// tokens per iteration).
#[derive(Debug, Clone)]
pub struct SecondaryX {
    pub label: String,
    pub scale: f64,
}

/// A chart of curves against a common x axis.
#[derive(Debug, Clone)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub y_scale: YScale,
    pub secondary_x: Option<SecondaryX>,
    pub bands: Vec<Band>,
    pub series: Vec<Series>,
    /// Printed under the chart (skipped values, missing data).
    pub notes: Vec<String>,
}

/// Curves with more points than this are reduced (keeping each bucket's minimum and maximum,
/// so the noise envelope stays visible) to keep SVG files small.
const MAX_DRAWN_POINTS: usize = 4000;

impl Drawing for LineChart {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        let area = draw_notes(root, &self.notes)?;

        let xs = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0));
        let xs = xs.chain(self.bands.iter().flat_map(|b| b.points.iter().map(|p| p.0)));
        let ys = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1));
        let ys = ys.chain(
            self.bands
                .iter()
                .flat_map(|b| b.points.iter().flat_map(|p| [p.1, p.2])),
        );
        let ys: Vec<f64> = ys.filter(|y| y.is_finite()).collect();
        let x_axis = Axis::for_x(xs);
        let y_axis = Axis::for_y(&ys, self.y_scale);
        let top_axis = match &self.secondary_x {
            Some(sec) => Axis::linear(x_axis.lo * sec.scale, x_axis.hi * sec.scale, 6),
            None => x_axis.clone(),
        };
        let y_label = if y_axis.log {
            format!("{} (log scale)", self.y_label)
        } else {
            self.y_label.clone()
        };

        let mut chart = ChartBuilder::on(&area)
            .caption(&self.title, (FONT, 22))
            .margin(14)
            .x_label_area_size(48)
            .y_label_area_size(78)
            .top_x_label_area_size(if self.secondary_x.is_some() { 48 } else { 0 })
            .build_cartesian_2d(x_axis.clone(), y_axis.clone())?
            .set_secondary_coord(top_axis.clone(), y_axis.clone());
        let (fx, fy) = (|v: &f64| x_axis.label(*v), |v: &f64| y_axis.label(*v));
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc(&y_label)
            .x_label_formatter(&fx)
            .y_label_formatter(&fy)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .bold_line_style(BLACK.mix(0.12))
            .light_line_style(TRANSPARENT)
            .draw()?;
        if let Some(sec) = &self.secondary_x {
            let ft = |v: &f64| top_axis.label(*v);
            chart
                .configure_secondary_axes()
                .x_desc(&sec.label)
                .x_label_formatter(&ft)
                .y_labels(0)
                .label_style((FONT, 14))
                .axis_desc_style((FONT, 16))
                .draw()?;
        }

        for band in &self.bands {
            let pts = decimate_band(&band.points, MAX_DRAWN_POINTS);
            let outline: Vec<(f64, f64)> = pts
                .iter()
                .map(|&(x, lo, _)| (x, lo))
                .chain(pts.iter().rev().map(|&(x, _, hi)| (x, hi)))
                .collect();
            chart.draw_series(std::iter::once(Polygon::new(
                outline,
                band.color.mix(0.2).filled(),
            )))?;
        }

        let mut labelled = false;
        for series in &self.series {
            let pts = decimate(&series.points, MAX_DRAWN_POINTS);
            let style = series.style;
            let shape = ShapeStyle::from(style.color).stroke_width(style.width);
            let anno = if series.markers_only {
                None
            } else {
                Some(match style.dash {
                    Dash::Solid => {
                        chart.draw_series(LineSeries::new(pts.iter().copied(), shape))?
                    }
                    Dash::Dashed => chart.draw_series(DashedLineSeries::new(
                        pts.iter().copied(),
                        12,
                        6,
                        shape,
                    ))?,
                    Dash::Dotted => chart.draw_series(DashedLineSeries::new(
                        pts.iter().copied(),
                        3,
                        5,
                        shape,
                    ))?,
                })
            };
            let anno = match style.marker {
                Some(_) => {
                    let every = style.marker_every.max(1);
                    let at = pts.iter().copied().step_by(every);
                    Some(chart.draw_series(at.map(|p| marker_glyph(p, style)))?)
                }
                None => anno,
            };
            if let (Some(label), Some(anno)) = (&series.label, anno) {
                let legend_style = LineStyle {
                    marker_every: 1,
                    ..style
                };
                let line = !series.markers_only;
                anno.label(label)
                    .legend(move |at| legend_glyph(at, legend_style, line));
                labelled = true;
            }
        }
        if labelled {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.9))
                .border_style(BLACK.mix(0.4))
                .label_font((FONT, 14))
                .legend_area_size(36)
                .draw()?;
        }
        Ok(())
    }
}

/// Values with a standard error per labelled item, in panels side by side (one per split),
/// items coloured by group, with each group's mean as a horizontal line across its items.
#[derive(Debug, Clone)]
pub struct ErrorBarChart {
    pub title: String,
    pub y_label: String,
    pub item_labels: Vec<String>,
    /// Legend entries: group label per group index.
    pub groups: Vec<String>,
    pub panels: Vec<ErrorBarPanel>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ErrorBarPanel {
    pub title: String,
    /// (item index, group index, value, standard error)
    pub items: Vec<(usize, usize, f64, Option<f64>)>,
}

impl Drawing for ErrorBarChart {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        let area = draw_notes(root, &self.notes)?;
        let area = area.titled(&self.title, (FONT, 22))?;
        let panels = area.split_evenly((1, self.panels.len().max(1)));
        for (panel, area) in self.panels.iter().zip(&panels) {
            let x_axis = Axis::categories(&self.item_labels);
            let mut ys: Vec<f64> = panel
                .items
                .iter()
                .flat_map(|&(_, _, v, se)| [v - se.unwrap_or(0.0), v + se.unwrap_or(0.0)])
                .filter(|y| y.is_finite())
                .collect();
            // Headroom for the legend in the upper right, so it never covers a point or an
            // error bar: about one line of the legend per group, as a fraction of the height.
            if let Some((lo, hi)) = finite_range(ys.iter().copied()) {
                let legend = (0.06 * self.groups.len() as f64 + 0.05).min(0.5);
                ys.push(hi + (hi - lo) * legend / (1.0 - legend));
            }
            let y_axis = Axis::for_y(&ys, YScale::Linear);
            let mut chart = ChartBuilder::on(area)
                .caption(&panel.title, (FONT, 18))
                .margin(14)
                .x_label_area_size(48)
                .y_label_area_size(78)
                .build_cartesian_2d(x_axis.clone(), y_axis.clone())?;
            let (fx, fy) = (|v: &f64| x_axis.label(*v), |v: &f64| y_axis.label(*v));
            chart
                .configure_mesh()
                .y_desc(&self.y_label)
                .x_label_formatter(&fx)
                .y_label_formatter(&fy)
                .label_style((FONT, 13))
                .axis_desc_style((FONT, 16))
                .bold_line_style(BLACK.mix(0.12))
                .light_line_style(TRANSPARENT)
                .disable_x_mesh()
                .draw()?;

            for (g, label) in self.groups.iter().enumerate() {
                let style = group_style(g);
                let shape = ShapeStyle::from(style.color).stroke_width(2);
                let items: Vec<_> = panel.items.iter().filter(|it| it.1 == g).copied().collect();
                if items.is_empty() {
                    continue;
                }
                chart.draw_series(items.iter().filter_map(|&(i, _, v, se)| {
                    se.map(|se| ErrorBar::new_vertical(i as f64, v - se, v, v + se, shape, 12))
                }))?;
                let anno = chart.draw_series(
                    items
                        .iter()
                        .map(|&(i, _, v, _)| marker_glyph((i as f64, v), style)),
                )?;
                anno.label(label)
                    .legend(move |at| legend_glyph(at, style, true));
                let mean = items.iter().map(|it| it.2).sum::<f64>() / items.len() as f64;
                let first = items.iter().map(|it| it.0).min().unwrap_or(0) as f64;
                let last = items.iter().map(|it| it.0).max().unwrap_or(0) as f64;
                let mean_line = vec![(first - 0.35, mean), (last + 0.35, mean)];
                chart.draw_series(DashedLineSeries::new(
                    mean_line,
                    8,
                    5,
                    ShapeStyle::from(style.color).stroke_width(1),
                ))?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.9))
                .border_style(BLACK.mix(0.4))
                .label_font((FONT, 13))
                .draw()?;
        }
        Ok(())
    }
}

/// Draws the notes as lines of small text along the bottom and returns the area above them.
fn draw_notes<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    notes: &[String],
) -> Result<DrawingArea<DB, Shift>>
where
    DB::ErrorType: 'static,
{
    if notes.is_empty() {
        return Ok(root.clone());
    }
    let line_height = 18;
    let (_, height) = root.dim_in_pixel();
    let split = height.saturating_sub(line_height * notes.len() as u32 + 8) as i32;
    let (area, footer) = root.split_vertically(split);
    for (i, note) in notes.iter().enumerate() {
        footer.draw_text(
            note,
            &(FONT, 13).into_font().color(&BLACK.mix(0.75)),
            (14, i as i32 * line_height as i32),
        )?;
    }
    Ok(area)
}

/// A marker, and for legend entries a short stretch of the line through it, drawn directly
/// with backend primitives (one element type for every marker and dash, so no boxed and
/// composed elements are needed).
struct Glyph<C> {
    at: C,
    style: LineStyle,
    /// Half the length of the line drawn through the marker (0: marker only).
    half_line: i32,
}

impl<'a, C> PointCollection<'a, C> for &'a Glyph<C> {
    type Point = &'a C;
    type IntoIter = std::iter::Once<&'a C>;
    fn point_iter(self) -> Self::IntoIter {
        std::iter::once(&self.at)
    }
}

impl<C, DB: DrawingBackend> Drawable<DB> for Glyph<C> {
    fn draw<I: Iterator<Item = BackendCoord>>(
        &self,
        mut pos: I,
        backend: &mut DB,
        _: (u32, u32),
    ) -> Result<(), DrawingErrorKind<DB::ErrorType>> {
        let Some((x, y)) = pos.next() else {
            return Ok(());
        };
        let style = self.style;
        let line = ShapeStyle::from(style.color).stroke_width(style.width);
        let (dash, gap) = match style.dash {
            Dash::Solid => (2 * self.half_line, 0),
            Dash::Dashed => (8, 4),
            Dash::Dotted => (3, 4),
        };
        let mut from = x - self.half_line;
        while from < x + self.half_line {
            let to = (from + dash).min(x + self.half_line);
            backend.draw_line((from, y), (to, y), &line)?;
            from = to + gap;
        }
        let fill = ShapeStyle::from(style.color).filled();
        match style.marker {
            None => Ok(()),
            Some(Marker::Circle) => backend.draw_circle((x, y), 4, &fill, true),
            Some(Marker::Triangle) => {
                backend.fill_polygon([(x, y - 5), (x - 5, y + 4), (x + 5, y + 4)], &fill)
            }
            Some(Marker::Square) => backend.draw_rect((x - 4, y - 4), (x + 4, y + 4), &fill, true),
            Some(Marker::Cross) => {
                let stroke = ShapeStyle::from(style.color).stroke_width(2);
                backend.draw_line((x - 4, y - 4), (x + 4, y + 4), &stroke)?;
                backend.draw_line((x - 4, y + 4), (x + 4, y - 4), &stroke)
            }
        }
    }
}

fn marker_glyph(at: (f64, f64), style: LineStyle) -> Glyph<(f64, f64)> {
    Glyph {
        at,
        style,
        half_line: 0,
    }
}

fn legend_glyph(at: BackendCoord, style: LineStyle, line: bool) -> Glyph<BackendCoord> {
    Glyph {
        at: (at.0 + 14, at.1),
        style,
        half_line: if line { 14 } else { 0 },
    }
}

/// Reduces a curve to at most about `max` points: each bucket keeps its lowest and highest
/// point, in order.
pub fn decimate(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max {
        return points.to_vec();
    }
    let bucket = points.len().div_ceil((max / 2).max(1));
    let mut out = Vec::with_capacity(max + 2);
    for chunk in points.chunks(bucket) {
        let lo = (0..chunk.len())
            .min_by(|&a, &b| chunk[a].1.total_cmp(&chunk[b].1))
            .unwrap_or(0);
        let hi = (0..chunk.len())
            .max_by(|&a, &b| chunk[a].1.total_cmp(&chunk[b].1))
            .unwrap_or(0);
        out.push(chunk[lo.min(hi)]);
        if lo != hi {
            out.push(chunk[lo.max(hi)]);
        }
    }
    out
}

fn decimate_band(points: &[(f64, f64, f64)], max: usize) -> Vec<(f64, f64, f64)> {
    if points.len() <= max {
        return points.to_vec();
    }
    let bucket = points.len().div_ceil(max.max(1));
    points
        .chunks(bucket)
        .map(|chunk| {
            let x = chunk[chunk.len() / 2].0;
            let lo = chunk.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
            let hi = chunk.iter().map(|p| p.2).fold(f64::NEG_INFINITY, f64::max);
            (x, lo, hi)
        })
        .collect()
}

/// A numeric axis with its own tick positions and labels. Plotters' logarithmic axis places
/// no ticks at all on a range inside one decade (e.g. 1.2 to 3.3, typical of a loss curve), so
/// ticks are chosen here: 1-2-5 multiples of powers of ten, or evenly spaced "nice" values
/// when those would be too few.
#[derive(Debug, Clone)]
pub struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    ticks: Vec<f64>,
    /// Distance between ticks when they are evenly spaced (sets the decimals of the labels).
    step: Option<f64>,
    categories: Option<Vec<String>>,
}

impl Axis {
    /// A linear axis over [lo, hi] with about `ticks` ticks.
    pub fn linear(lo: f64, hi: f64, ticks: usize) -> Axis {
        let (lo, hi) = widen(lo, hi);
        let step = nice_step(hi - lo, ticks);
        Axis {
            lo,
            hi,
            log: false,
            ticks: even_ticks(lo, hi, step),
            step: Some(step),
            categories: None,
        }
    }

    /// A logarithmic axis over [lo, hi] (both positive).
    pub fn log(lo: f64, hi: f64, ticks: usize) -> Axis {
        let (lo, hi) = if hi > lo {
            (lo, hi)
        } else {
            (lo / 1.5, hi * 1.5)
        };
        let decades = (lo.log10().floor() as i32)..=(hi.log10().ceil() as i32);
        for mantissas in [&[1.0, 2.0, 5.0][..], &[1.0][..]] {
            let found: Vec<f64> = decades
                .clone()
                .flat_map(|e| mantissas.iter().map(move |m| m * 10f64.powi(e)))
                .filter(|v| (lo..=hi).contains(v))
                .collect();
            if found.len() >= 3 && found.len() <= ticks.max(3) {
                return Axis {
                    lo,
                    hi,
                    log: true,
                    ticks: found,
                    step: None,
                    categories: None,
                };
            }
        }
        let span = hi.log10() - lo.log10();
        if span > ticks as f64 {
            // Many decades: one tick every few powers of ten.
            let every = (span / ticks as f64).ceil() as i32;
            let ticks = decades
                .filter(|e| e % every == 0)
                .map(|e| 10f64.powi(e))
                .filter(|v| (lo..=hi).contains(v));
            return Axis {
                lo,
                hi,
                log: true,
                ticks: ticks.collect(),
                step: None,
                categories: None,
            };
        }
        // Within a decade or two: evenly spaced values, placed logarithmically.
        let step = nice_step(hi - lo, ticks.min(6));
        Axis {
            lo,
            hi,
            log: true,
            ticks: even_ticks(lo, hi, step),
            step: Some(step),
            categories: None,
        }
    }

    /// An x axis over the given values, starting at 0 for non-negative data (progress axes).
    fn for_x(values: impl Iterator<Item = f64>) -> Axis {
        let (lo, hi) = finite_range(values).unwrap_or((0.0, 1.0));
        let lo = if lo >= 0.0 { 0.0 } else { lo };
        let hi = if hi > lo { hi + 0.02 * (hi - lo) } else { hi };
        Axis::linear(lo, hi, 7)
    }

    /// A y axis over the given values with a margin, logarithmic if asked (or if `Auto` and
    /// the values span a factor of 4).
    fn for_y(values: &[f64], scale: YScale) -> Axis {
        let (lo, hi) = finite_range(values.iter().copied()).unwrap_or((0.0, 1.0));
        let log = lo > 0.0
            && match scale {
                YScale::Linear => false,
                YScale::Auto => hi / lo >= 4.0,
            };
        if log {
            let pad = (hi / lo).powf(0.04).max(1.02);
            Axis::log(lo / pad, hi * pad, 8)
        } else {
            let pad = 0.05 * (hi - lo);
            Axis::linear(lo - pad, hi + pad, 8)
        }
    }

    /// An axis of named items at 0, 1, 2, ...
    pub fn categories(labels: &[String]) -> Axis {
        let n = labels.len().max(1);
        Axis {
            lo: -0.6,
            hi: n as f64 - 0.4,
            log: false,
            ticks: (0..labels.len()).map(|i| i as f64).collect(),
            step: Some(1.0),
            categories: Some(labels.to_vec()),
        }
    }

    /// The label of a tick.
    pub fn label(&self, v: f64) -> String {
        if let Some(labels) = &self.categories {
            return labels
                .get(v.round().max(0.0) as usize)
                .cloned()
                .unwrap_or_default();
        }
        let step = self
            .step
            .unwrap_or_else(|| 10f64.powf(v.abs().log10().floor()));
        format_number(v, step)
    }
}

impl Ranged for Axis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let t = |v: f64| {
            if self.log {
                v.max(f64::MIN_POSITIVE).ln()
            } else {
                v
            }
        };
        let frac = (t(*value) - t(self.lo)) / (t(self.hi) - t(self.lo));
        // Keep far-off points (clipped anyway) from overflowing the pixel arithmetic.
        let frac = if frac.is_finite() {
            frac.clamp(-10.0, 10.0)
        } else {
            0.0
        };
        limit.0 + (frac * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // Light points are the minor grid, which these charts do not draw.
        let max = hint.max_num_points();
        if max == 0 || hint.weight().allow_light_points() {
            return Vec::new();
        }
        let every = self.ticks.len().div_ceil(max).max(1);
        self.ticks.iter().copied().step_by(every).collect()
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}

/// The smallest and largest finite value.
fn finite_range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

/// Gives an empty range (a single value) some width.
fn widen(lo: f64, hi: f64) -> (f64, f64) {
    if hi > lo {
        return (lo, hi);
    }
    let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
    (lo - pad, hi + pad)
}

/// A step of 1, 2 or 5 times a power of ten giving at most about `ticks` ticks over `span`.
fn nice_step(span: f64, ticks: usize) -> f64 {
    let raw = span / ticks.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * magnitude)
}

fn even_ticks(lo: f64, hi: f64, step: f64) -> Vec<f64> {
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// Formats a tick value with as many decimals as `step` needs; large values get a k/M/B/T
/// suffix (iterations and tokens reach billions).
pub fn format_number(v: f64, step: f64) -> String {
    let (scale, suffix) = [(1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")]
        .into_iter()
        .find(|&(scale, _)| v.abs() >= scale)
        .unwrap_or((1.0, ""));
    // The fewest decimals that write the step exactly (0.25 needs 2).
    let step = step.abs() / scale;
    let decimals = (0..9)
        .find(|&d| {
            let scaled = step * 10f64.powi(d);
            (scaled - scaled.round()).abs() < 1e-6 * scaled.max(1.0)
        })
        .unwrap_or(9) as usize;
    let mut text = format!("{:.*}", decimals, v / scale);
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    if text == "-0" {
        text = "0".into();
    }
    text + suffix
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_are_short_and_exact() {
        assert_eq!(format_number(0.0, 2000.0), "0");
        assert_eq!(format_number(2000.0, 2000.0), "2k");
        assert_eq!(format_number(1250.0, 250.0), "1.25k");
        assert_eq!(format_number(500_000.0, 100_000.0), "500k");
        assert_eq!(format_number(3.5e9, 5e8), "3.5B");
        assert_eq!(format_number(1.5, 0.5), "1.5");
        assert_eq!(format_number(1.0, 0.5), "1");
        assert_eq!(format_number(1.002, 0.002), "1.002");
        assert_eq!(format_number(0.02, 0.02), "0.02");
    }

    #[test]
    fn log_axes_get_ticks_inside_a_single_decade() {
        let axis = Axis::log(1.2, 3.3, 8);
        assert!(axis.ticks.len() >= 3, "{:?}", axis.ticks);
        assert!(axis.ticks.iter().all(|t| (1.2..=3.3).contains(t)));
        let wide = Axis::log(0.01, 100.0, 8);
        assert_eq!(wide.ticks.first(), Some(&0.01));
        assert_eq!(wide.ticks.last(), Some(&100.0));
    }

    #[test]
    fn decimation_keeps_the_extremes() {
        let points: Vec<(f64, f64)> = (0..10_000)
            .map(|i| (i as f64, if i == 4321 { 99.0 } else { (i % 7) as f64 }))
            .collect();
        let reduced = decimate(&points, 500);
        assert!(reduced.len() <= 502);
        assert!(reduced.contains(&(4321.0, 99.0)));
        assert!(reduced.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
