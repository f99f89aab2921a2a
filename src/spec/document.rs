//! An experiment document on its way from RON text to typed values.
//!
//! The RON tree is converted to the JSON that serde would produce for the experiment types
//! (externally tagged enums, tuples as arrays, `Some(x)` as `x`), guided by the generated
//! schema so that `D3pmAbsorbing` alone means the variant with all defaults and a named
//! struct `Network(..)` is just a struct. While converting, every JSON location (a JSON
//! pointer) remembers its span, its dotted path and what was written there, so schema and
//! semantic errors can point at the source. `--set` overrides edit this JSON, with their own
//! spans, before anything is validated.

use std::collections::HashMap;

use serde_json::{Map, Number, Value as Json};

use super::diagnostics::{Diagnostic, closest};
use super::ron_tree::{Node, Span, Value};
use super::schema::{Reader, Shape};

/// Where a JSON location came from.
#[derive(Debug, Clone)]
pub struct Location {
    /// The value's span.
    pub span: Span,
    /// Dotted path as `--set` accepts it (enum variants are transparent).
    pub path: String,
    /// What was written there, for "found ..." messages.
    pub found: String,
}

/// The JSON of an experiment with the source location of each of its values.
pub struct Document<'s> {
    schema: Reader<'s>,
    /// What the whole document is, for messages: "the experiment" or "the sweep".
    root: &'static str,
    pub json: Json,
    locations: HashMap<String, Location>,
    pub diagnostics: Vec<Diagnostic>,
}

impl<'s> Document<'s> {
    /// Converts a parsed file; `root` says what it describes ("the experiment").
    pub fn from_tree(schema: &'s Json, tree: &Node, root: &'static str) -> Self {
        let mut doc = Document {
            schema: Reader::new(schema),
            root,
            json: Json::Null,
            locations: HashMap::new(),
            diagnostics: vec![],
        };
        doc.json = doc.convert(tree, Some(schema), String::new(), String::new());
        doc
    }

    /// The location recorded for a JSON pointer, or for its nearest recorded ancestor.
    pub fn locate(&self, pointer: &str) -> Option<&Location> {
        let mut p = pointer;
        loop {
            if let Some(l) = self.locations.get(p) {
                return Some(l);
            }
            p = &p[..p.rfind('/')?];
        }
    }

    /// The span of a dotted path: the field's value if it was written, else its nearest
    /// written ancestor (a defaulted field points at the struct that omits it).
    pub fn span_of_path(&self, path: &str) -> Span {
        let mut p = path;
        loop {
            if let Some(l) = self.locations.values().find(|l| l.path == p) {
                return l.span.clone();
            }
            match p.rfind('.') {
                Some(i) => p = &p[..i],
                None if !p.is_empty() => p = "",
                None => return 0..0,
            }
        }
    }

    fn record(&mut self, pointer: &str, node: &Node, path: &str) {
        self.locations.insert(
            pointer.to_string(),
            Location {
                span: node.span.clone(),
                path: path.to_string(),
                found: node.value.describe(),
            },
        );
    }

    fn error(&mut self, span: Span, path: &str, message: impl Into<String>) -> Json {
        self.diagnostics
            .push(Diagnostic::error(span, path, message));
        Json::Null
    }

    fn convert(
        &mut self,
        node: &Node,
        schema: Option<&'s Json>,
        pointer: String,
        path: String,
    ) -> Json {
        self.record(&pointer, node, &path);
        // A schema that accepts anything (a sweep's grid values): keep the value as written;
        // it is checked where it is used.
        if schema.is_some_and(accepts_anything) {
            return as_written(node);
        }
        let Some(schema) = schema else {
            return self.convert_plain(node, None, &pointer, &path);
        };
        match self.schema.shape(schema) {
            Shape::Optional { inner } => match &node.value {
                Value::None => Json::Null,
                Value::Some(x) => self.convert(x, inner.or(Some(schema)), pointer, path),
                _ => match inner {
                    Some(inner) => self.convert(node, Some(inner), pointer, path),
                    None => self.convert_plain(node, Some(schema), &pointer, &path),
                },
            },
            Shape::Enum { variants } => {
                let (name, data): (&str, Option<&Node>) = match &node.value {
                    Value::Unit(i) => (&i.name, None),
                    Value::Struct { name: Some(n), .. } | Value::Tuple { name: Some(n), .. } => {
                        (&n.name, Some(node))
                    }
                    Value::Str(s) => {
                        let help = if variants.iter().any(|v| v.name == s) {
                            format!("write `{s}` without quotes")
                        } else {
                            "write one of the variants without quotes".to_string()
                        };
                        self.diagnostics.push(
                            Diagnostic::error(node.span.clone(), &path, "expected an enum variant")
                                .expected(self.schema.describe(schema))
                                .found(node.value.describe())
                                .help(help),
                        );
                        return Json::Null;
                    }
                    _ => {
                        self.diagnostics.push(
                            Diagnostic::error(node.span.clone(), &path, "expected an enum variant")
                                .expected(self.schema.describe(schema))
                                .found(node.value.describe()),
                        );
                        return Json::Null;
                    }
                };
                let name = name.to_string();
                let Some(variant) = variants.iter().find(|v| v.name == name) else {
                    let names: Vec<&str> = variants.iter().map(|v| v.name).collect();
                    let mut d = Diagnostic::error(
                        node.span.start..node.span.start + name.len(),
                        &path,
                        format!("unknown variant `{name}`"),
                    )
                    .expected(self.schema.describe(schema))
                    .found(format!("`{name}`"));
                    if let Some(best) = closest(&name, names.iter().copied()) {
                        d = d.help(format!("did you mean `{best}`?"));
                    }
                    self.diagnostics.push(d);
                    return Json::Null;
                };
                let variant_pointer = format!("{pointer}/{name}");
                match (variant.body, data) {
                    (None, None) => Json::String(name),
                    (None, Some(_)) => self.error(
                        node.span.clone(),
                        &path,
                        format!("variant `{name}` takes no arguments; write `{name}`"),
                    ),
                    // A data variant written bare: all its fields take their defaults.
                    (Some(_), None) => {
                        self.record(&variant_pointer, node, &path);
                        Json::Object(Map::from_iter([(name, Json::Object(Map::new()))]))
                    }
                    (Some(body), Some(data)) => {
                        let inner = match &data.value {
                            Value::Tuple { items, .. } if items.len() == 1 => {
                                self.convert(&items[0], Some(body), variant_pointer, path)
                            }
                            Value::Tuple { items, .. } if items.is_empty() => {
                                self.record(&variant_pointer, data, &path);
                                Json::Object(Map::new())
                            }
                            _ => {
                                let unnamed = strip_name(data);
                                self.convert(&unnamed, Some(body), variant_pointer, path)
                            }
                        };
                        Json::Object(Map::from_iter([(name, inner)]))
                    }
                }
            }
            Shape::Struct { properties } => match &node.value {
                Value::Struct { fields, .. } => {
                    let mut object = Map::new();
                    for field in fields {
                        let fname = &field.name.name;
                        let fpath = join(&path, fname);
                        match properties.get(fname) {
                            Some(fschema) => {
                                let v = self.convert(
                                    &field.value,
                                    Some(fschema),
                                    format!("{pointer}/{fname}"),
                                    fpath,
                                );
                                object.insert(fname.clone(), v);
                            }
                            None => {
                                let d = unknown_field(
                                    self.root,
                                    field.name.span.clone(),
                                    &path,
                                    fname,
                                    properties.keys().map(String::as_str),
                                );
                                self.diagnostics.push(d);
                            }
                        }
                    }
                    Json::Object(object)
                }
                Value::Tuple { items, .. } if items.is_empty() => Json::Object(Map::new()),
                _ => {
                    self.diagnostics.push(
                        Diagnostic::error(node.span.clone(), &path, "wrong type")
                            .expected(self.schema.describe(schema))
                            .found(node.value.describe()),
                    );
                    Json::Null
                }
            },
            Shape::Other => self.convert_plain(node, Some(schema), &pointer, &path),
        }
    }

    /// Numbers, strings, lists and tuples. Type mismatches that the schema can describe are
    /// left to schema validation; values JSON cannot hold are reported here.
    fn convert_plain(
        &mut self,
        node: &Node,
        schema: Option<&'s Json>,
        pointer: &str,
        path: &str,
    ) -> Json {
        let schema = schema.map(|s| self.schema.resolve(s));
        let wants_integer = schema.is_some_and(|s| {
            s.get("type") == Some(&"integer".into())
                || s.get("type")
                    .and_then(Json::as_array)
                    .is_some_and(|ts| ts.iter().any(|t| t == "integer"))
        });
        match &node.value {
            Value::Bool(b) => Json::Bool(*b),
            Value::Int(i) => match (i64::try_from(*i), u64::try_from(*i)) {
                (Ok(v), _) => Json::Number(v.into()),
                (_, Ok(v)) => Json::Number(v.into()),
                _ => self.error(node.span.clone(), path, "integer out of range"),
            },
            Value::Float(f) => {
                if wants_integer {
                    self.diagnostics.push(
                        Diagnostic::error(node.span.clone(), path, "wrong type")
                            .expected(
                                schema.map_or("an integer".into(), |s| self.schema.describe(s)),
                            )
                            .found(node.value.describe())
                            .help("write it without a decimal point or exponent"),
                    );
                    return Json::Null;
                }
                match Number::from_f64(*f) {
                    Some(n) => Json::Number(n),
                    None => self.error(
                        node.span.clone(),
                        path,
                        format!("expected a finite number, found `{f}`"),
                    ),
                }
            }
            Value::Str(s) => Json::String(s.clone()),
            Value::Char(c) => Json::String(c.to_string()),
            Value::None => Json::Null,
            Value::Some(x) => self.convert(x, schema, pointer.to_string(), path.to_string()),
            Value::List(items) => {
                let item_schema = schema.and_then(|s| s.get("items"));
                let converted = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        self.convert(
                            item,
                            item_schema,
                            format!("{pointer}/{i}"),
                            format!("{path}[{i}]"),
                        )
                    })
                    .collect();
                Json::Array(converted)
            }
            Value::Tuple { name: None, items } if !items.is_empty() => {
                let prefix = schema
                    .and_then(|s| s.get("prefixItems"))
                    .and_then(Json::as_array);
                let converted = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        let item_schema = prefix.and_then(|p| p.get(i));
                        self.convert(
                            item,
                            item_schema,
                            format!("{pointer}/{i}"),
                            format!("{path}[{i}]"),
                        )
                    })
                    .collect();
                Json::Array(converted)
            }
            Value::Map(entries) => {
                let mut object = Map::new();
                for (k, v) in entries {
                    let Value::Str(key) = &k.value else {
                        self.error(k.span.clone(), path, "map keys must be strings");
                        continue;
                    };
                    let value_schema = schema.and_then(|s| s.get("additionalProperties"));
                    let value =
                        self.convert(v, value_schema, format!("{pointer}/{key}"), join(path, key));
                    object.insert(key.clone(), value);
                }
                Json::Object(object)
            }
            Value::Unit(_) | Value::Struct { .. } | Value::Tuple { .. } => {
                let expected = schema.map_or("a plain value".into(), |s| self.schema.describe(s));
                let mut diagnostic = Diagnostic::error(node.span.clone(), path, "wrong type")
                    .found(node.value.describe());
                // A bare word where text belongs: RON wants it quoted.
                if let Value::Unit(word) = &node.value
                    && expected == "a string"
                {
                    diagnostic = diagnostic.help(super::validate::quote_help(path, &word.name));
                }
                self.diagnostics.push(diagnostic.expected(expected));
                Json::Null
            }
        }
    }

    /// Applies `--set path=value`: `path_span` and the value's spans point into the
    /// override's source text.
    pub fn apply_override(&mut self, path: &str, path_span: Span, value: &Node) {
        let root_schema = self.schema.root();
        let mut schema = root_schema;
        let mut pointer = String::new();
        let mut dotted = String::new();
        let segments: Vec<&str> = path.split('.').collect();
        let mut offset = path_span.start;
        for (i, seg) in segments.iter().enumerate() {
            let seg_span = offset..offset + seg.len();
            offset += seg.len() + 1;
            if seg.is_empty() {
                self.error(seg_span, &dotted, "empty segment in the --set path");
                return;
            }
            // Step through an enum variant transparently: `model.lambda_ce` reaches into
            // `D3pmAbsorbing(lambda_ce: ..)`.
            let properties = match self.schema.shape(schema) {
                Shape::Struct { properties } => properties,
                Shape::Enum { variants } => {
                    let current = self.json.pointer(&pointer).and_then(|v| v.as_object());
                    let chosen = current.and_then(|o| o.keys().next().cloned());
                    let body = chosen
                        .as_deref()
                        .and_then(|c| variants.iter().find(|v| v.name == c))
                        .and_then(|v| v.body.map(|b| (v.name, b)));
                    match body.map(|(n, b)| (n, b, self.schema.shape(b))) {
                        Some((name, _, Shape::Struct { properties })) => {
                            pointer = format!("{pointer}/{name}");
                            properties
                        }
                        _ => {
                            self.error(
                                seg_span,
                                &dotted,
                                format!(
                                    "`{dotted}` has no field `{seg}`; set it whole, e.g. --set {dotted}=Variant(...)"
                                ),
                            );
                            return;
                        }
                    }
                }
                _ => {
                    self.error(
                        seg_span,
                        &dotted,
                        format!("`{dotted}` is not a struct; it has no field `{seg}`"),
                    );
                    return;
                }
            };
            let Some(field_schema) = properties.get(*seg) else {
                let d = unknown_field(
                    self.root,
                    seg_span,
                    &dotted,
                    seg,
                    properties.keys().map(String::as_str),
                );
                self.diagnostics.push(d);
                return;
            };
            let parent = pointer.clone();
            pointer = format!("{pointer}/{seg}");
            dotted = join(&dotted, seg);
            if i + 1 == segments.len() {
                self.locations
                    .retain(|p, _| !(p == &pointer || p.starts_with(&format!("{pointer}/"))));
                let converted =
                    self.convert(value, Some(field_schema), pointer.clone(), dotted.clone());
                if let Some(obj) = self.json.pointer_mut(&parent).and_then(Json::as_object_mut) {
                    obj.insert(seg.to_string(), converted);
                }
                return;
            }
            // An intermediate that the file leaves out starts from its default.
            let exists = self.json.pointer(&pointer).is_some_and(|v| !v.is_null());
            if !exists {
                let Some(default) = field_schema.get("default").cloned() else {
                    self.error(
                        seg_span,
                        &dotted,
                        format!("`{dotted}` is not set in the file and has no default; set it whole, e.g. --set {dotted}=..."),
                    );
                    return;
                };
                if let Some(obj) = self.json.pointer_mut(&parent).and_then(Json::as_object_mut) {
                    obj.insert(seg.to_string(), default);
                }
                self.locations.insert(
                    pointer.clone(),
                    Location {
                        span: path_span.clone(),
                        path: dotted.clone(),
                        found: "the default".into(),
                    },
                );
            }
            schema = field_schema;
        }
    }
}

/// `true` or `{}`: the schema of a value of any type.
fn accepts_anything(schema: &Json) -> bool {
    schema == &Json::Bool(true) || schema.as_object().is_some_and(Map::is_empty)
}

/// The JSON of a value with no schema to guide it: variants become their names, named
/// structs and tuples `{name: body}`, as serde would write them.
fn as_written(node: &Node) -> Json {
    let named = |name: &Option<super::ron_tree::Ident>, body: Json| match name {
        Some(n) => Json::Object(Map::from_iter([(n.name.clone(), body)])),
        None => body,
    };
    match &node.value {
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => i64::try_from(*i)
            .map(Json::from)
            .or_else(|_| u64::try_from(*i).map(Json::from))
            .unwrap_or_else(|_| Json::String(i.to_string())),
        Value::Float(f) => {
            Number::from_f64(*f).map_or_else(|| Json::String(f.to_string()), Json::Number)
        }
        Value::Str(s) => Json::String(s.clone()),
        Value::Char(c) => Json::String(c.to_string()),
        Value::None => Json::Null,
        Value::Some(x) => as_written(x),
        Value::List(items) => Json::Array(items.iter().map(as_written).collect()),
        Value::Map(entries) => Json::Object(
            entries
                .iter()
                .map(|(k, v)| {
                    let key = match &k.value {
                        Value::Str(s) => s.clone(),
                        other => other.describe(),
                    };
                    (key, as_written(v))
                })
                .collect(),
        ),
        Value::Struct { name, fields } => named(
            name,
            Json::Object(
                fields
                    .iter()
                    .map(|f| (f.name.name.clone(), as_written(&f.value)))
                    .collect(),
            ),
        ),
        Value::Tuple { name, items } => {
            named(name, Json::Array(items.iter().map(as_written).collect()))
        }
        Value::Unit(i) => Json::String(i.name.clone()),
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn strip_name(node: &Node) -> Node {
    let mut n = node.clone();
    if let Value::Struct { name, .. } | Value::Tuple { name, .. } = &mut n.value {
        *name = None;
    }
    n
}

fn unknown_field<'a>(
    root: &str,
    span: Span,
    parent: &str,
    name: &str,
    known: impl Iterator<Item = &'a str> + Clone,
) -> Diagnostic {
    let what = if parent.is_empty() {
        root.to_string()
    } else {
        format!("`{parent}`")
    };
    let list: Vec<String> = known.clone().map(|k| format!("`{k}`")).collect();
    let mut d = Diagnostic::error(
        span,
        &join(parent, name),
        format!("unknown field `{name}` in {what}"),
    )
    .expected(format!("one of {}", list.join(", ")));
    if let Some(best) = closest(name, known) {
        d = d.help(format!("did you mean `{best}`?"));
    }
    d
}
