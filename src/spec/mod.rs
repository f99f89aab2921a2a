//! Experiment files: the types, loading from RON, `--set` overrides, and validation.
//!
//! Loading runs four stages and stops after the first that finds errors, reporting every
//! error of that stage with its location:
//! 1. parse the RON text into a tree that remembers positions ([`ron_tree`]);
//! 2. convert it to JSON guided by the schema, apply `--set` overrides ([`document`]);
//! 3. validate the JSON against the generated JSON Schema ([`schema`], [`validate`]);
//! 4. deserialise into [`Experiment`] and run the semantic checks.

mod diagnostics;
mod document;
pub mod limits;
mod ron_tree;
pub mod schema;
pub mod sweep;
mod types;
mod validate;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use diagnostics::{Diagnostic, Severity, Sources, SpecError, closest};
pub use types::*;

use document::Document;

/// A valid experiment and any warnings about it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub experiment: Experiment,
    /// Warnings (the file is valid); empty diagnostics when there are none.
    pub warnings: SpecError,
}

impl Loaded {
    /// Errors if this binary cannot run the experiment (a backend asked for, not built in).
    /// `validate` only warns about this; every command that runs an experiment calls it.
    pub fn require_runnable(&self) -> Result<(), SpecError> {
        if !self.experiment.topology.backend.is_built() {
            let mut err = self.warnings.clone();
            err.diagnostics = self
                .warnings
                .diagnostics
                .iter()
                .filter(|d| d.path == "topology.backend")
                .map(|d| Diagnostic {
                    severity: Severity::Error,
                    ..d.clone()
                })
                .collect();
            return Err(err);
        }
        Ok(())
    }
}

/// Reads, overrides and validates an experiment file. Overrides are `path=value` with the
/// value in RON syntax, e.g. `train.lr=3e-4` or `sampler=Uniform`.
pub fn load(path: &Path, overrides: &[String]) -> Result<Loaded, SpecError> {
    let text = read_text(path).map_err(|e| {
        SpecError::whole_file(path, format!("cannot read the experiment file: {e}"))
    })?;
    load_str(path, &text, overrides)
}

/// The largest experiment or sweep file read: they are a few kilobytes, and a file of
/// gigabytes (a wrong path, a corpus) is refused before it is read into memory.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// The text of an experiment or sweep file, refused when larger than [`MAX_FILE_BYTES`].
pub(crate) fn read_text(path: &Path) -> std::io::Result<String> {
    let size = std::fs::metadata(path)?.len();
    if size > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!(
            "it is {size} bytes; experiment and sweep files take at most {MAX_FILE_BYTES} \
             (1 MiB)"
        )));
    }
    std::fs::read_to_string(path)
}

/// As [`load`], with the file's text given (`path` names it in messages).
pub fn load_str(path: &Path, text: &str, overrides: &[String]) -> Result<Loaded, SpecError> {
    let mut sources = Sources::default();
    let base = sources.add(path.display().to_string(), text);
    let tree = parse_source(path, &sources, text, base)?;
    let edits: Vec<Edit> = overrides.iter().map(|o| Edit::Set(o)).collect();
    load_tree(path, sources, &tree, &edits)
}

/// A change to an experiment document before it is validated.
#[derive(Clone)]
pub(crate) enum Edit<'a> {
    /// `path=value` as given to `--set`; its text becomes a source of its own.
    Set(&'a str),
    /// A dotted path and a value parsed from a source already in the error's sources (a
    /// sweep file), so that errors point into that file.
    Value {
        path: &'a str,
        path_span: ron_tree::Span,
        value: &'a ron_tree::Node,
    },
}

/// Stage 1: parses `text`, whose spans start at `base` in `sources`.
pub(crate) fn parse_source(
    file: &Path,
    sources: &Sources,
    text: &str,
    base: usize,
) -> Result<ron_tree::Node, SpecError> {
    ron_tree::parse_at(text, base).map_err(|e| SpecError {
        file: file.to_path_buf(),
        sources: sources.clone(),
        diagnostics: vec![Diagnostic::error(
            e.span,
            "",
            format!("invalid RON: {}", e.message),
        )],
    })
}

/// Stage 2: the experiment document of `tree` with `edits` applied in order.
fn edited_document(
    tree: &ron_tree::Node,
    sources: &mut Sources,
    edits: &[Edit],
) -> Document<'static> {
    let mut doc = Document::from_tree(schema_json(), tree, "the experiment");
    for edit in edits {
        match edit {
            Edit::Set(o) => {
                let base = sources.add(format!("--set {o}"), *o);
                apply_override(&mut doc, o, base);
            }
            Edit::Value {
                path,
                path_span,
                value,
            } => doc.apply_override(path, path_span.clone(), value),
        }
    }
    doc
}

/// Stages 2–4 for an experiment parsed from `sources` (named `file` in messages).
pub(crate) fn load_tree(
    file: &Path,
    mut sources: Sources,
    tree: &ron_tree::Node,
    edits: &[Edit],
) -> Result<Loaded, SpecError> {
    let doc = edited_document(tree, &mut sources, edits);
    let mut err = SpecError {
        file: file.to_path_buf(),
        sources,
        diagnostics: vec![],
    };
    let fail = |mut err: SpecError, diagnostics: Vec<Diagnostic>| {
        err.diagnostics = diagnostics;
        Err(err)
    };
    if !doc.diagnostics.is_empty() {
        return fail(err, doc.diagnostics);
    }

    let schema_errors = validate::against_schema(&doc, validator());
    if !schema_errors.is_empty() {
        return fail(err, schema_errors);
    }

    let experiment: Experiment = match serde_json::from_value(doc.json.clone()) {
        Ok(e) => e,
        Err(e) => {
            return fail(
                err,
                vec![Diagnostic::error(
                    0..0,
                    "",
                    format!("does not describe an experiment: {e}"),
                )],
            );
        }
    };

    let (errors, warnings): (Vec<_>, Vec<_>) = validate::semantic(&experiment)
        .into_iter()
        .map(|p| {
            let span = doc.span_of_path(p.path);
            let mut d = if p.warning {
                Diagnostic::warning(span, p.path, p.message)
            } else {
                Diagnostic::error(span, p.path, p.message)
            };
            d.expected = p.expected;
            d.found = p.found;
            d
        })
        .partition(Diagnostic::is_error);
    if !errors.is_empty() {
        return fail(err, errors);
    }
    err.diagnostics = warnings;
    Ok(Loaded {
        experiment,
        warnings: err,
    })
}

/// The value at a dotted path of the edited (not yet validated) document, if it is a
/// string: how a sweep learns the name its grid members start from.
pub(crate) fn edited_string(
    tree: &ron_tree::Node,
    sources: &Sources,
    edits: &[Edit],
    path: &str,
) -> Option<String> {
    let doc = edited_document(tree, &mut sources.clone(), edits);
    let pointer: String = path.split('.').map(|s| format!("/{s}")).collect();
    doc.json.pointer(&pointer)?.as_str().map(str::to_string)
}

/// Parses one `path=value` and applies it to the document.
fn apply_override(doc: &mut Document, text: &str, base: usize) {
    let Some(eq) = text.find('=') else {
        doc.diagnostics.push(
            Diagnostic::error(
                base..base + text.len(),
                "",
                "an override must look like path=value",
            )
            .found(format!("`{text}`"))
            .help("e.g. --set train.lr=3e-4 or --set sampler=Uniform"),
        );
        return;
    };
    let path = text[..eq].trim();
    let value_base = base + eq + 1;
    match ron_tree::parse_at(&text[eq + 1..], value_base) {
        Ok(value) => doc.apply_override(path, base..base + eq, &value),
        Err(e) => {
            let value = text[eq + 1..].trim();
            let mut diagnostic =
                Diagnostic::error(e.span, path, format!("invalid RON value: {}", e.message));
            if !value.starts_with(['"', '(', '[']) {
                diagnostic = diagnostic.help(validate::quote_help(path, value));
            }
            doc.diagnostics.push(diagnostic)
        }
    }
}

/// The experiment schema, generated once.
fn schema_json() -> &'static serde_json::Value {
    static SCHEMA: OnceLock<serde_json::Value> = OnceLock::new();
    SCHEMA.get_or_init(schema::experiment)
}

fn validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        jsonschema::validator_for(schema_json())
            .expect("the generated schema is a valid JSON Schema")
    })
}

/// The resolved experiment as RON, exactly as written into a run folder.
pub fn to_ron(experiment: &Experiment) -> String {
    let config = ron::ser::PrettyConfig::new().struct_names(false);
    let mut s =
        ron::ser::to_string_pretty(experiment, config).expect("experiments serialise to RON");
    s.push('\n');
    s
}

/// Experiment files under `path`: the file itself, or every `.ron` file below a folder
/// (sorted, so output is stable). Symbolic links are followed, to files and folders alike; a
/// link that leads back into a folder above it, or to nothing, is an error that names it.
pub fn experiment_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        std::fs::metadata(path)?;
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = vec![];
    for entry in walkdir::WalkDir::new(path)
        .follow_links(true)
        .sort_by_file_name()
    {
        let entry = entry.map_err(std::io::Error::other)?;
        if entry.file_type().is_file() && entry.path().extension().is_some_and(|e| e == "ron") {
            files.push(entry.into_path());
        }
    }
    Ok(files)
}
