//! Located error messages for experiment files and `--set` overrides.
//!
//! Every problem found while loading an experiment becomes a [`Diagnostic`]: which source
//! (the file or one override), the byte span, the field path (`train.lr`), what was expected,
//! what was found, and a hint such as the closest valid name. [`SpecError`] collects them and
//! renders each as a one-line summary (`file:line:col: ...`) followed by the source line with
//! the span underlined.

use std::fmt;
use std::path::{Path, PathBuf};

use codespan_reporting::diagnostic::{Diagnostic as Report, Label, Severity as ReportSeverity};
use codespan_reporting::files::SimpleFiles;
use codespan_reporting::term;

use super::ron_tree::{Span, line_col};

/// The most characters of a source line a snippet shows; a longer line (a `--set` value of
/// 100 KB) is shown as a window around the span, so a message stays a few lines long.
const MAX_SNIPPET_LINE: usize = 160;
/// The most characters of a source name, an expected or a found value in a summary line.
const MAX_SUMMARY_PART: usize = 120;
/// The most diagnostics a report shows; the rest are counted (a list of 10 000 wrong values
/// is one mistake repeated).
const MAX_SHOWN: usize = 20;

/// `text` cut to `max` characters, with `…` where it was cut.
pub(crate) fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((at, _)) => format!("{}…", &text[..at]),
    }
}

/// Index of a source text within a [`Sources`].
pub type SourceId = usize;

/// The texts a diagnostic can point into: the experiment file, then one entry per `--set`.
///
/// The texts share one offset space (each starts where the previous one ended, plus one),
/// so a span alone says which text it is in: values spliced in from an override keep spans
/// into the override.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    entries: Vec<SourceText>,
}

#[derive(Debug, Clone)]
struct SourceText {
    name: String,
    text: String,
    base: usize,
}

impl Sources {
    /// Adds a text and returns the offset its spans start at.
    pub fn add(&mut self, name: impl Into<String>, text: impl Into<String>) -> usize {
        let base = self.entries.last().map_or(0, |e| e.base + e.text.len() + 1);
        self.entries.push(SourceText {
            name: name.into(),
            text: text.into(),
            base,
        });
        base
    }

    /// The source a global offset falls in, and the offset within it.
    pub fn locate(&self, offset: usize) -> (SourceId, usize) {
        let id = self
            .entries
            .iter()
            .rposition(|e| e.base <= offset)
            .unwrap_or(0);
        (id, offset.saturating_sub(self.entries[id].base))
    }

    pub fn name(&self, id: SourceId) -> &str {
        &self.entries[id].name
    }

    pub fn text(&self, id: SourceId) -> &str {
        &self.entries[id].text
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem at one place.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Global span (see [`Sources`]).
    pub span: Span,
    /// Dotted field path as `--set` accepts it, e.g. `train.lr`; empty for the whole file.
    pub path: String,
    pub message: String,
    pub expected: Option<String>,
    pub found: Option<String>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(span: Span, path: &str, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            span,
            path: path.to_string(),
            message: message.into(),
            expected: None,
            found: None,
            help: None,
        }
    }

    pub fn warning(span: Span, path: &str, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(span, path, message)
        }
    }

    pub fn expected(mut self, expected: impl Into<String>) -> Self {
        self.expected = Some(expected.into());
        self
    }

    pub fn found(mut self, found: impl Into<String>) -> Self {
        self.found = Some(found.into());
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// Everything wrong with one experiment (errors and warnings), with the texts to show.
#[derive(Debug, Clone)]
pub struct SpecError {
    pub file: PathBuf,
    pub sources: Sources,
    pub diagnostics: Vec<Diagnostic>,
}

impl SpecError {
    /// An error that is not about any position in a source (e.g. the file cannot be read).
    pub fn whole_file(file: &Path, message: impl Into<String>) -> Self {
        let mut sources = Sources::default();
        sources.add(file.display().to_string(), "");
        SpecError {
            file: file.to_path_buf(),
            sources,
            diagnostics: vec![Diagnostic::error(0..0, "", message)],
        }
    }

    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }

    /// `name:line:col` of a diagnostic.
    pub fn location(&self, d: &Diagnostic) -> String {
        let (id, offset) = self.sources.locate(d.span.start);
        let (line, col) = line_col(self.sources.text(id), offset);
        format!(
            "{}:{line}:{col}",
            clip(self.sources.name(id), MAX_SUMMARY_PART)
        )
    }

    /// The full report: a summary line and an annotated snippet per diagnostic.
    pub fn render(&self) -> String {
        let mut files = SimpleFiles::new();
        for id in 0..self.sources.len() {
            files.add(
                clip(self.sources.name(id), MAX_SUMMARY_PART),
                self.sources.text(id).to_string(),
            );
        }
        let config = term::Config::default();
        let mut out = String::new();
        for d in self.diagnostics.iter().take(MAX_SHOWN) {
            out.push_str(&self.summary(d));
            out.push('\n');
            let (id, start) = self.sources.locate(d.span.start);
            if self.sources.text(id).is_empty() {
                continue;
            }
            let local = start..start + d.span.len();
            if let Some(window) = long_line_window(self.sources.text(id), local.clone()) {
                out.push_str(&window);
                continue;
            }
            let notes: Vec<String> = d.help.iter().map(|h| format!("help: {h}")).collect();
            let severity = match d.severity {
                Severity::Error => ReportSeverity::Error,
                Severity::Warning => ReportSeverity::Warning,
            };
            // The summary line carries the message; the label only marks the place.
            let label = d
                .expected
                .as_ref()
                .map_or(String::new(), |e| format!("expected {e}"));
            let report = Report::new(severity)
                .with_labels(vec![Label::primary(id, local).with_message(label)])
                .with_notes(notes);
            // The summary line above already carries the message; the snippet shows where.
            if let Ok(snippet) = term::emit_into_string(&config, &files, &report) {
                out.push_str(
                    snippet
                        .trim_start_matches(|c| c != '\n')
                        .trim_start_matches('\n'),
                );
            }
        }
        if self.diagnostics.len() > MAX_SHOWN {
            out.push_str(&format!(
                "… and {} more like these\n",
                self.diagnostics.len() - MAX_SHOWN
            ));
        }
        out
    }

    /// `file:line:col: error: `path`: message (expected ..., found ...)`.
    pub fn summary(&self, d: &Diagnostic) -> String {
        let kind = match d.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let mut s = format!("{}: {kind}", self.location(d));
        if !d.path.is_empty() {
            s.push_str(&format!(": `{}`", d.path));
        }
        s.push_str(&format!(": {}", clip(&d.message, 4 * MAX_SUMMARY_PART)));
        let expected = d.expected.as_deref().map(|e| clip(e, MAX_SUMMARY_PART));
        let found = d.found.as_deref().map(|f| clip(f, MAX_SUMMARY_PART));
        match (&expected, &found) {
            (Some(e), Some(f)) => s.push_str(&format!(" (expected {e}, found {f})")),
            (Some(e), None) => s.push_str(&format!(" (expected {e})")),
            (None, Some(f)) => s.push_str(&format!(" (found {f})")),
            (None, None) => {}
        }
        if let Some(h) = &d.help {
            s.push_str(&format!("; {h}"));
        }
        s
    }
}

/// A snippet of the line holding `span` when that line is too long to show whole: a window
/// of the line around the span's start, with the span (or its beginning) underlined.
fn long_line_window(text: &str, span: Span) -> Option<String> {
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = &text[line_start..line_end];
    if line.chars().count() <= MAX_SNIPPET_LINE {
        return None;
    }
    let before: Vec<char> = text[line_start..start].chars().collect();
    let shown_before = before.len().min(MAX_SNIPPET_LINE / 2);
    let lead: String = before[before.len() - shown_before..].iter().collect();
    let rest: String = text[start..line_end]
        .chars()
        .take(MAX_SNIPPET_LINE - shown_before)
        .collect();
    let cut_before = if shown_before < before.len() {
        "…"
    } else {
        ""
    };
    let cut_after = if start + rest.len() < line_end {
        "…"
    } else {
        ""
    };
    let marked = text[start..span.end.clamp(start, line_end)]
        .chars()
        .count()
        .clamp(1, rest.chars().count().max(1));
    let pad = cut_before.chars().count() + lead.chars().count();
    Some(format!(
        "  │ {cut_before}{lead}{rest}{cut_after}\n  │ {}{}\n",
        " ".repeat(pad),
        "^".repeat(marked)
    ))
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.render().trim_end())
    }
}

impl std::error::Error for SpecError {}

/// The closest name to `wrong` among `candidates`, if it is close enough to be a likely typo.
pub fn closest<'a>(wrong: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let wrong_lower = wrong.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (c, strsim::jaro_winkler(&wrong_lower, &c.to_lowercase())))
        .filter(|&(_, score)| score >= 0.8)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(c, _)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_names() {
        let fields = ["lr", "min_lr", "warmup_iters", "max_iters", "batch_size"];
        assert_eq!(closest("warmup_iter", fields), Some("warmup_iters"));
        assert_eq!(closest("batchsize", fields), Some("batch_size"));
        assert_eq!(closest("zzzz", fields), None);
        assert_eq!(
            closest("LowDiscrepency", ["Uniform", "LowDiscrepancy"]),
            Some("LowDiscrepancy")
        );
    }

    #[test]
    fn render_points_at_the_line() {
        let mut sources = Sources::default();
        sources.add("exp.ron", "(\n  train: (lr: -1),\n)");
        let base = sources.add("--set train.lr=x", "train.lr=x");
        let err = SpecError {
            file: "exp.ron".into(),
            sources,
            diagnostics: vec![
                Diagnostic::error(16..18, "train.lr", "must be positive")
                    .expected("a number > 0")
                    .found("-1"),
            ],
        };
        let text = err.render();
        assert!(
            text.starts_with("exp.ron:2:15: error: `train.lr`: must be positive"),
            "{text}"
        );
        assert!(text.contains("expected a number > 0, found -1"), "{text}");
        assert!(text.contains("train: (lr: -1)"), "{text}");
        assert_eq!(err.sources.locate(base + 9), (1, 9));
    }

    #[test]
    fn a_huge_override_gives_a_short_message() {
        let value = format!("[{}]", "1, ".repeat(40_000));
        let set = format!("seed={value}");
        let mut sources = Sources::default();
        sources.add("exp.ron", "(name: \"x\")");
        let base = sources.add(format!("--set {set}"), set.as_str());
        let err = SpecError {
            file: "exp.ron".into(),
            sources,
            diagnostics: vec![
                Diagnostic::error(base + 5..base + set.len(), "seed", "wrong type")
                    .expected("an integer")
                    .found(value.clone()),
            ],
        };
        let text = err.render();
        assert!(text.len() < 2_000, "{} bytes:\n{text}", text.len());
        assert!(text.contains("--set seed=[1, 1"), "{text}");
        assert!(text.contains("wrong type"), "{text}");
    }
}
