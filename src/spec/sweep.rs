//! Sweeps: the members of a sweep folder, and sweep files (`sweep.ron`) whose grid expands
//! into members.
//!
//! Every experiment file in a sweep folder (walked recursively, sorted) is a member, except
//! the files named [`SWEEP_FILE`], which are grids:
//!
//! ```ron
//! (
//!     base: "base.ron",                       // relative to the sweep file's folder
//!     set: {"train.max_iters": 300},          // applied to every member first
//!     grid: {
//!         "sampler": [Uniform, LowDiscrepancy],
//!         "seed": [1, 2, 3],
//!     },
//! )
//! ```
//!
//! A grid has one member per combination of values; the first axis varies slowest. Each
//! member's experiment `name` is its member name, `<name>-sampler_Uniform-seed_1`: the base's
//! name (after `set`), then `path_value` per axis. An experiment file that a sweep file names
//! as its base is not a member by itself.
//!
//! Expansion is applying overrides, as `--set` does, to the base: the order is the base file,
//! `set`, the grid point, then the command line's `--set`. So a misspelt axis gets the same
//! located "did you mean" error as a misspelt `--set`, pointing into the sweep file.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::diagnostics::{Diagnostic, Sources, SpecError};
use super::document::Document;
use super::ron_tree::{Node, Span, Value};
use super::{Edit, Loaded, load, load_tree, parse_source, validate};

/// The name that makes a `.ron` file in a sweep folder a sweep file.
pub const SWEEP_FILE: &str = "sweep.ron";

/// Longest experiment name the experiment schema accepts.
const MAX_NAME_LEN: usize = 100;

/// The most members a grid may expand into: each is a validated experiment held in memory
/// and a run, so a grid of several long axes is refused before it is expanded.
pub const MAX_GRID_MEMBERS: usize = 10_000;

/// A sweep file: a base experiment and the grid it is varied over. These types are the
/// contract; `schemas/sweep.schema.json` is generated from them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sweep {
    /// The experiment file every member starts from, relative to the sweep file's folder.
    pub base: PathBuf,
    /// Fields set in every member before the grid: `{"path": value}`, with paths as `--set`
    /// takes them (`train.lr`, `dataset.seq_len`) and values in RON.
    #[serde(default)]
    pub set: BTreeMap<String, serde_json::Value>,
    /// The grid axes: `{"path": [value, ...]}`, paths and values as in `set`. Every
    /// combination of values is one member; the axes vary in the order written, the last
    /// one fastest.
    #[schemars(extend(
        "minProperties" = 1,
        "additionalProperties" = {"type": "array", "items": true, "minItems": 1}
    ))]
    pub grid: BTreeMap<String, Vec<serde_json::Value>>,
}

/// One experiment of a sweep, validated.
#[derive(Debug, Clone)]
pub struct Member {
    /// Unique within the sweep: a grid member's experiment name, or an experiment file's
    /// path inside the sweep folder without `.ron` (`/` replaced by `-`).
    pub name: String,
    /// The file it comes from (the sweep file for a grid member).
    pub file: PathBuf,
    /// A grid member's point, `(axis path, value as written)`; empty for an experiment file.
    pub point: Vec<(String, String)>,
    pub loaded: Loaded,
}

impl Member {
    /// `sampler=Uniform seed=1`, or the file for an experiment-file member.
    pub fn describe(&self) -> String {
        if self.point.is_empty() {
            return self.file.display().to_string();
        }
        let point: Vec<String> = self.point.iter().map(|(p, v)| format!("{p}={v}")).collect();
        point.join(" ")
    }
}

/// An expanded sweep file.
#[derive(Debug, Clone)]
pub struct Grid {
    /// The base experiment file, resolved against the sweep file's folder.
    pub base: PathBuf,
    pub members: Vec<Member>,
}

/// The JSON Schema of a sweep file.
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Sweep)).expect("schemas serialise to JSON")
}

fn schema_json() -> &'static serde_json::Value {
    static SCHEMA: OnceLock<serde_json::Value> = OnceLock::new();
    SCHEMA.get_or_init(schema)
}

fn validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        jsonschema::validator_for(schema_json())
            .expect("the generated schema is a valid JSON Schema")
    })
}

/// Whether `path` is a sweep file (by its name).
pub fn is_sweep_file(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == SWEEP_FILE)
}

/// Every member of a sweep folder, all validated, in order: the folder's files sorted, a
/// sweep file's members in its place. Each invalid file gives one error (a grid's members
/// share one); a folder with no members or two members of the same name is an error too.
pub fn members(dir: &Path, overrides: &[String]) -> Result<Vec<Member>, Vec<SpecError>> {
    let files = super::experiment_files(dir).map_err(|e| {
        vec![SpecError::whole_file(
            dir,
            format!("cannot read the sweep folder: {e}"),
        )]
    })?;
    let mut errors = vec![];
    let mut grids = HashMap::new();
    for file in files.iter().filter(|f| is_sweep_file(f)) {
        match load_grid(file, overrides) {
            Ok(grid) => {
                grids.insert(file.clone(), grid);
            }
            Err(e) => errors.push(e),
        }
    }
    let bases: Vec<PathBuf> = grids.values().map(|g| canonical(&g.base)).collect();
    let mut members = vec![];
    for file in &files {
        if let Some(grid) = grids.remove(file) {
            members.extend(grid.members);
        } else if is_sweep_file(file) || bases.contains(&canonical(file)) {
            continue;
        } else {
            match load(file, overrides) {
                Ok(loaded) => members.push(Member {
                    name: file_member_name(dir, file),
                    file: file.clone(),
                    point: vec![],
                    loaded,
                }),
                Err(e) => errors.push(e),
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    if members.is_empty() {
        return Err(vec![SpecError::whole_file(
            dir,
            format!(
                "no members: the folder has no experiment (.ron) file and no {SWEEP_FILE} grid"
            ),
        )]);
    }
    let mut seen: HashMap<&str, &Path> = HashMap::new();
    for m in &members {
        if let Some(other) = seen.insert(&m.name, &m.file) {
            errors.push(SpecError::whole_file(
                &m.file,
                format!(
                    "two members are named `{}` (from {} and {}); rename one of the files",
                    m.name,
                    other.display(),
                    m.file.display()
                ),
            ));
        }
    }
    if errors.is_empty() {
        Ok(members)
    } else {
        Err(errors)
    }
}

/// Reads, validates and expands one sweep file; every member is validated. The error holds
/// the sweep file's own problems, else each distinct problem of its members once (naming the
/// members it affects when it is not all of them).
pub fn load_grid(path: &Path, overrides: &[String]) -> Result<Grid, SpecError> {
    let text = super::read_text(path)
        .map_err(|e| SpecError::whole_file(path, format!("cannot read the sweep file: {e}")))?;

    // The sweep file on its own: RON, then the sweep schema.
    let mut own = Sources::default();
    own.add(path.display().to_string(), text.as_str());
    let tree = parse_source(path, &own, &text, 0)?;
    let own_error = |diagnostics: Vec<Diagnostic>| SpecError {
        file: path.to_path_buf(),
        sources: own.clone(),
        diagnostics,
    };
    let doc = Document::from_tree(schema_json(), &tree, "the sweep");
    if !doc.diagnostics.is_empty() {
        return Err(own_error(doc.diagnostics));
    }
    let schema_errors = validate::against_schema(&doc, validator());
    if !schema_errors.is_empty() {
        return Err(own_error(schema_errors));
    }
    let sweep: Sweep = serde_json::from_value(doc.json.clone()).map_err(|e| {
        own_error(vec![Diagnostic::error(
            0..0,
            "",
            format!("does not describe a sweep: {e}"),
        )])
    })?;
    let base_span = doc.span_of_path("base");
    let folder = path.parent().unwrap_or(Path::new(""));
    let base = folder.join(&sweep.base);
    let base_text = super::read_text(&base).map_err(|e| {
        own_error(vec![
            Diagnostic::error(
                base_span,
                "base",
                format!("cannot read the base experiment {}: {e}", base.display()),
            )
            .help("the base is relative to the sweep file's folder"),
        ])
    })?;

    // The members: the base file with edits from the sweep file, whose spans now follow the
    // base's text in the members' sources.
    let mut sources = Sources::default();
    sources.add(base.display().to_string(), base_text.as_str());
    let offset = sources.add(path.display().to_string(), text.as_str());
    let base_tree = parse_source(&base, &sources, &base_text, 0)?;
    let tree = parse_source(path, &sources, &text, offset)?;
    let local = |span: &Span| span.start - offset..span.end - offset;
    let set = entries(&text, offset, &tree, "set");
    let axes: Vec<(Entry, Vec<&Node>)> = entries(&text, offset, &tree, "grid")
        .into_iter()
        .map(|e| {
            let values = match &e.value.value {
                Value::List(items) => items.iter().collect(),
                _ => vec![],
            };
            (e, values)
        })
        .collect();

    let mut problems = vec![];
    for (axis, _) in &axes {
        if axis.path == "name" {
            problems.push(
                Diagnostic::error(
                    axis.path_span.clone(),
                    "name",
                    "the grid cannot vary `name`",
                )
                .help("members are named after their grid point"),
            );
        }
        if set.iter().any(|s| s.path == axis.path) {
            problems.push(Diagnostic::error(
                axis.path_span.clone(),
                &axis.path,
                format!("`{}` is both in `set` and in `grid`", axis.path),
            ));
        }
    }
    for o in overrides {
        let target = o.split('=').next().unwrap_or_default().trim();
        if target == "name" || axes.iter().any(|(a, _)| a.path == target) {
            let at = sources.add(format!("--set {o}"), o.as_str());
            problems.push(
                Diagnostic::error(
                    at..at + target.len(),
                    target,
                    format!(
                        "--set cannot change `{target}`: the grid of {} sets it for each member",
                        path.display()
                    ),
                )
                .help("change the sweep file instead"),
            );
        }
    }
    if !problems.is_empty() {
        return Err(SpecError {
            file: path.to_path_buf(),
            sources,
            diagnostics: problems,
        });
    }

    let set_edits: Vec<Edit> = set.iter().map(Entry::edit).collect();
    let prefix =
        super::edited_string(&base_tree, &sources, &set_edits, "name").unwrap_or_else(|| {
            folder
                .file_name()
                .map_or("sweep".into(), |n| n.to_string_lossy().into_owned())
        });

    let grid_span = doc.span_of_path("grid");
    let grid_span = grid_span.start + offset..grid_span.end + offset;
    let size = axes
        .iter()
        .try_fold(1usize, |n, (_, values)| n.checked_mul(values.len()))
        .filter(|&n| n <= MAX_GRID_MEMBERS);
    if size.is_none() {
        let lengths: Vec<String> = axes.iter().map(|(_, v)| v.len().to_string()).collect();
        return Err(SpecError {
            file: path.to_path_buf(),
            sources,
            diagnostics: vec![
                Diagnostic::error(
                    grid_span,
                    "grid",
                    format!(
                        "the grid has {} members; a sweep takes at most {MAX_GRID_MEMBERS}",
                        lengths.join(" × ")
                    ),
                )
                .help("split it into several sweep folders, or shorten its axes"),
            ],
        });
    }
    let mut members: Vec<Member> = vec![];
    let mut failures: Vec<(String, SpecError)> = vec![];
    for point in product(&axes) {
        let labels: Vec<(String, String)> = point
            .iter()
            .map(|(axis, value)| {
                (
                    axis.path.clone(),
                    written(&text, &local(&value.span), value),
                )
            })
            .collect();
        let name = member_name(&prefix, &labels);
        if let Some(problem) = name_problem(&name) {
            return Err(SpecError {
                file: path.to_path_buf(),
                sources,
                diagnostics: vec![
                    Diagnostic::error(grid_span, "grid", problem)
                        .found(format!("`{name}`"))
                        .help("shorten the base experiment's name (e.g. with `set: {\"name\": \"short\"}`) or the grid values"),
                ],
            });
        }
        if let Some(twin) = members.iter().find(|m| m.name == name) {
            let (_, value) = point.last().expect("a grid has axes");
            return Err(SpecError {
                file: path.to_path_buf(),
                sources,
                diagnostics: vec![Diagnostic::error(
                    value.span.clone(),
                    "grid",
                    format!(
                        "grid points {} and {} both make the member name `{name}`",
                        twin.describe(),
                        labels
                            .iter()
                            .map(|(p, v)| format!("{p}={v}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                )],
            });
        }
        let name_node = Node {
            value: Value::Str(name.clone()),
            span: grid_span.clone(),
        };
        let mut edits = set_edits.clone();
        edits.extend(point.iter().map(|(axis, value)| Edit::Value {
            path: &axis.path,
            path_span: axis.path_span.clone(),
            value,
        }));
        edits.extend(overrides.iter().map(|o| Edit::Set(o)));
        edits.push(Edit::Value {
            path: "name",
            path_span: grid_span.clone(),
            value: &name_node,
        });
        match load_tree(path, sources.clone(), &base_tree, &edits) {
            Ok(loaded) => members.push(Member {
                name,
                file: path.to_path_buf(),
                point: labels,
                loaded,
            }),
            Err(e) => failures.push((name, e)),
        }
    }
    if failures.is_empty() {
        return Ok(Grid { base, members });
    }
    Err(merge_failures(path, failures, members.len()))
}

/// One `"path": value` entry of the sweep file's `set` or `grid`, spans in member sources.
#[derive(Clone)]
struct Entry<'t> {
    path: String,
    path_span: Span,
    value: &'t Node,
}

impl<'t> Entry<'t> {
    fn edit(&self) -> Edit<'_> {
        Edit::Value {
            path: &self.path,
            path_span: self.path_span.clone(),
            value: self.value,
        }
    }
}

/// The entries of the map in the sweep's field `field`, in the order written.
fn entries<'t>(text: &str, offset: usize, tree: &'t Node, field: &str) -> Vec<Entry<'t>> {
    let Value::Struct { fields, .. } = &tree.value else {
        return vec![];
    };
    let Some(Value::Map(map)) = fields
        .iter()
        .find(|f| f.name.name == field)
        .map(|f| &f.value.value)
    else {
        return vec![];
    };
    map.iter()
        .filter_map(|(key, value)| {
            let Value::Str(path) = &key.value else {
                return None;
            };
            // Point at the path inside the quotes when it is written plainly.
            let inner = key.span.start + 1..key.span.end - 1;
            let plain = text.get(inner.start - offset..inner.end - offset) == Some(path.as_str());
            Some(Entry {
                path: path.clone(),
                path_span: if plain { inner } else { key.span.clone() },
                value,
            })
        })
        .collect()
}

/// Every combination of one value per axis, the first axis varying slowest.
fn product<'a, 't>(axes: &'a [(Entry<'t>, Vec<&'t Node>)]) -> Vec<Vec<(&'a Entry<'t>, &'t Node)>> {
    let mut points: Vec<Vec<(&Entry, &Node)>> = vec![vec![]];
    for (axis, values) in axes {
        points = points
            .into_iter()
            .flat_map(|point| {
                values.iter().map(move |v| {
                    let mut p = point.clone();
                    p.push((axis, *v));
                    p
                })
            })
            .collect();
    }
    points
}

/// A grid value as written in the file (a string without its quotes), on one line.
fn written(text: &str, span: &Span, node: &Node) -> String {
    match &node.value {
        Value::Str(s) => s.clone(),
        _ => text[span.clone()]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// `<prefix>-<path>_<value>-...`, with characters an experiment name cannot hold replaced
/// by `_` (runs of them collapsed, none at the ends of a value).
pub fn member_name(prefix: &str, point: &[(String, String)]) -> String {
    let mut name = prefix.to_string();
    for (path, value) in point {
        name.push('-');
        name.push_str(&name_safe(path));
        name.push('_');
        name.push_str(&name_safe(value));
    }
    name
}

fn name_safe(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || "_.-".contains(c) {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_end_matches('_').to_string()
}

/// Why `name` cannot be an experiment name, if it cannot (the schema's pattern and length).
fn name_problem(name: &str) -> Option<String> {
    if name.len() > MAX_NAME_LEN {
        return Some(format!(
            "the member name is {} characters long; experiment names take at most {MAX_NAME_LEN}",
            name.len()
        ));
    }
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok {
        return Some("the member name must start with a letter or digit".into());
    }
    None
}

/// An experiment file's member name: its path in the folder without `.ron`, `/` as `-`.
fn file_member_name(dir: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(dir).unwrap_or(file).with_extension("");
    let parts: Vec<String> = relative
        .components()
        .map(|c| name_safe(&c.as_os_str().to_string_lossy()))
        .collect();
    parts.join("-")
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

/// One error for a grid's failing members: each distinct diagnostic once, marked with the
/// members it affects unless it affects them all.
fn merge_failures(path: &Path, failures: Vec<(String, SpecError)>, valid: usize) -> SpecError {
    let total = failures.len() + valid;
    let mut merged: Vec<(Diagnostic, Vec<String>)> = vec![];
    let mut sources = None;
    for (name, err) in failures {
        for d in err.diagnostics.into_iter().filter(Diagnostic::is_error) {
            match merged.iter_mut().find(|(m, _)| *m == d) {
                Some((_, names)) => names.push(name.clone()),
                None => merged.push((d, vec![name.clone()])),
            }
        }
        sources.get_or_insert(err.sources);
    }
    let diagnostics = merged
        .into_iter()
        .map(|(mut d, names)| {
            if names.len() < total {
                let list: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
                d.message = format!(
                    "{} (member{} {})",
                    d.message,
                    if names.len() == 1 { "" } else { "s" },
                    list.join(", ")
                );
            }
            d
        })
        .collect();
    SpecError {
        file: path.to_path_buf(),
        sources: sources.unwrap_or_default(),
        diagnostics,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::TimeSampler;

    const BASE: &str = r#"(
    name: "base",
    network: (n_embed: 32, n_heads: 2, n_blocks: 1, n_cond: 16),
    dataset: Synthetic(seq_len: 16),
    train: (batch_size: 4, max_iters: 10, warmup_iters: 2),
)
"#;

    /// A sweep folder with base.ron, the given sweep.ron and other files.
    fn folder(sweep: &str, others: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("base.ron"), BASE).unwrap();
        std::fs::write(dir.path().join(SWEEP_FILE), sweep).unwrap();
        for (name, text) in others {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    fn first_error(err: &SpecError) -> (String, &Diagnostic) {
        let d = err.errors().next().expect("an error");
        (err.location(d), d)
    }

    #[test]
    fn a_grid_expands_in_order_with_readable_names() {
        let dir = folder(
            r#"(
    base: "base.ron",
    set: {"train.max_iters": 7, "network.n_blocks": 2},
    grid: {"sampler": [Uniform, LowDiscrepancy], "seed": [1, 2, 3]},
)"#,
            &[("extra.ron", &BASE.replace("\"base\"", "\"extra\""))],
        );
        let members = members(dir.path(), &["train.lr=3e-4".into()]).unwrap();
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        // base.ron is the grid's base, not a member; files come in sorted order, the grid
        // in place of sweep.ron, its first axis varying slowest.
        assert_eq!(
            names,
            [
                "extra",
                "base-sampler_Uniform-seed_1",
                "base-sampler_Uniform-seed_2",
                "base-sampler_Uniform-seed_3",
                "base-sampler_LowDiscrepancy-seed_1",
                "base-sampler_LowDiscrepancy-seed_2",
                "base-sampler_LowDiscrepancy-seed_3",
            ]
        );
        let extra = &members[0].loaded.experiment;
        assert_eq!((extra.name.as_str(), extra.train.max_iters), ("extra", 10));
        assert_eq!(extra.train.lr, 3e-4, "--set reaches file members");
        for (i, m) in members[1..].iter().enumerate() {
            let e = &m.loaded.experiment;
            assert_eq!(
                e.name, m.name,
                "a grid member's experiment is named after it"
            );
            let sampler = if i < 3 {
                TimeSampler::Uniform
            } else {
                TimeSampler::LowDiscrepancy
            };
            assert_eq!(e.sampler, sampler);
            assert_eq!(e.seed, i as u64 % 3 + 1);
            assert_eq!(e.train.max_iters, 7, "`set` applies to every member");
            assert_eq!(e.network.n_blocks, 2);
            assert_eq!(e.train.lr, 3e-4, "--set applies after the grid");
            assert_eq!(m.file, dir.path().join(SWEEP_FILE));
        }
        assert_eq!(members[4].describe(), "sampler=LowDiscrepancy seed=1");
        assert_eq!(
            members[0].describe(),
            dir.path().join("extra.ron").display().to_string()
        );
    }

    #[test]
    fn member_names_keep_only_characters_names_may_hold() {
        let point = [
            ("dataset".to_string(), "Synthetic(seq_len: 32)".to_string()),
            ("train.lr".to_string(), "3e-4".to_string()),
            ("note".to_string(), "a b/c".to_string()),
        ];
        assert_eq!(
            member_name("exp", &point),
            "exp-dataset_Synthetic_seq_len_32-train.lr_3e-4-note_a_b_c"
        );
    }

    #[test]
    fn a_misspelt_axis_is_located_in_the_sweep_file() {
        let dir = folder(
            "(\n    base: \"base.ron\",\n    grid: {\n        \"samplr\": [Uniform],\n    },\n)",
            &[],
        );
        let err = load_grid(&dir.path().join(SWEEP_FILE), &[]).unwrap_err();
        let (at, d) = first_error(&err);
        assert_eq!(
            at,
            format!("{}:4:10", dir.path().join(SWEEP_FILE).display())
        );
        assert_eq!(d.help.as_deref(), Some("did you mean `sampler`?"));
        // The folder fails as a whole: nothing is a member.
        assert!(members(dir.path(), &[]).is_err());
    }

    #[test]
    fn a_bad_value_names_the_members_it_breaks() {
        let dir = folder(
            "(\n    base: \"base.ron\",\n    grid: {\"sampler\": [Uniform, LowDiscrepancy], \"seed\": [1, \"two\"]},\n)",
            &[],
        );
        let err = load_grid(&dir.path().join(SWEEP_FILE), &[]).unwrap_err();
        assert_eq!(err.errors().count(), 1, "{}", err.render());
        let (at, d) = first_error(&err);
        assert_eq!(
            at,
            format!("{}:3:62", dir.path().join(SWEEP_FILE).display())
        );
        assert!(
            d.message.ends_with(
                "(members `base-sampler_Uniform-seed_two`, `base-sampler_LowDiscrepancy-seed_two`)"
            ),
            "{}",
            d.message
        );
    }

    #[test]
    fn the_sweep_file_is_checked_against_its_schema() {
        for (sweep, message, at) in [
            ("(base: \"base.ron\", grid: {})", "", "1:26"),
            (
                "(base: \"base.ron\", grid: {\"seed\": []})",
                "needs at least 1 entry",
                "1:35",
            ),
            (
                "(base: \"base.ron\", grids: {\"seed\": [1]})",
                "unknown field `grids` in the sweep",
                "1:20",
            ),
            (
                "(grid: {\"seed\": [1]})",
                "missing required field `base`",
                "1:1",
            ),
            (
                "(base: \"nope.ron\", grid: {\"seed\": [1]})",
                "cannot read the base experiment",
                "1:8",
            ),
            (
                "(base: \"base.ron\", grid: {\"name\": [\"a\"]})",
                "the grid cannot vary `name`",
                "1:28",
            ),
            (
                "(base: \"base.ron\", grid: {\"seed\": [1, 1]})",
                "both make the member name",
                "1:39",
            ),
        ] {
            let dir = folder(sweep, &[]);
            let file = dir.path().join(SWEEP_FILE);
            let err = load_grid(&file, &[]).unwrap_err();
            let (location, d) = first_error(&err);
            assert!(d.message.contains(message), "{sweep}: {}", err.render());
            assert_eq!(location, format!("{}:{at}", file.display()), "{sweep}");
        }
    }

    #[test]
    fn set_cannot_override_what_the_grid_varies() {
        let dir = folder("(base: \"base.ron\", grid: {\"seed\": [1, 2]})", &[]);
        let err = load_grid(&dir.path().join(SWEEP_FILE), &["seed=3".into()]).unwrap_err();
        let (location, d) = first_error(&err);
        assert_eq!(location, "--set seed=3:1:1");
        assert!(
            d.message.contains("--set cannot change `seed`"),
            "{}",
            d.message
        );
    }
}
