//! JSON Schemas generated from the Rust types, the checked-in copies in `schemas/`, and a
//! small reader that answers "what may go here?" for suggestions and RON conversion.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{Map, Value};

use super::Experiment;

/// A schema file that ddexp generates: its file name in `schemas/` and its content.
pub struct SchemaFile {
    pub file_name: &'static str,
    pub schema: Value,
}

/// Every schema ddexp generates.
pub fn all() -> Vec<SchemaFile> {
    vec![
        SchemaFile {
            file_name: "experiment.schema.json",
            schema: experiment(),
        },
        SchemaFile {
            file_name: "sweep.schema.json",
            schema: super::sweep::schema(),
        },
    ]
}

/// The JSON Schema of an experiment file.
pub fn experiment() -> Value {
    serde_json::to_value(schemars::schema_for!(Experiment)).expect("schemas serialise to JSON")
}

/// The text written to disk: pretty JSON with a final newline, so diffs stay readable.
pub fn to_text(schema: &Value) -> String {
    let mut s = serde_json::to_string_pretty(schema).expect("schemas serialise to JSON");
    s.push('\n');
    s
}

/// Writes every schema into `dir` (atomically per file); returns the paths written.
pub fn write_all(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    all()
        .into_iter()
        .map(|f| {
            let path = dir.join(f.file_name);
            let tmp = dir.join(format!(".{}.tmp", f.file_name));
            std::fs::write(&tmp, to_text(&f.schema))
                .with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        })
        .collect()
}

/// The schema files in `dir` that are missing or differ from what the code generates.
pub fn drift(dir: &Path) -> Vec<PathBuf> {
    all()
        .into_iter()
        .filter_map(|f| {
            let path = dir.join(f.file_name);
            let current = std::fs::read_to_string(&path).ok();
            (current.as_deref() != Some(to_text(&f.schema).as_str())).then_some(path)
        })
        .collect()
}

/// What a schema node describes, as far as RON conversion and suggestions care.
pub enum Shape<'s> {
    /// An object with named fields.
    Struct { properties: &'s Map<String, Value> },
    /// An externally tagged enum.
    Enum { variants: Vec<Variant<'s>> },
    /// A value that may be `None`; `inner` is absent when the node itself lists "null" among
    /// its types (an optional primitive).
    Optional { inner: Option<&'s Value> },
    /// Anything else: numbers, strings, booleans, arrays, tuples.
    Other,
}

/// One variant of an enum: unit variants have no body.
pub struct Variant<'s> {
    pub name: &'s str,
    pub body: Option<&'s Value>,
}

/// Reads a generated schema document.
pub struct Reader<'s> {
    root: &'s Value,
}

impl<'s> Reader<'s> {
    pub fn new(root: &'s Value) -> Self {
        Reader { root }
    }

    pub fn root(&self) -> &'s Value {
        self.root
    }

    /// Follows `$ref`s to the definition.
    pub fn resolve(&self, mut node: &'s Value) -> &'s Value {
        while let Some(r) = node.get("$ref").and_then(Value::as_str) {
            let Some(target) = r
                .strip_prefix('#')
                .and_then(|pointer| self.root.pointer(pointer))
            else {
                break;
            };
            node = target;
        }
        node
    }

    pub fn shape(&self, node: &'s Value) -> Shape<'s> {
        let node = self.resolve(node);
        if let Some(types) = node.get("type").and_then(Value::as_array)
            && types.iter().any(|t| t == "null")
        {
            return Shape::Optional { inner: None };
        }
        if let Some(any_of) = node.get("anyOf").and_then(Value::as_array)
            && any_of.len() == 2
            && let Some(null_at) = any_of
                .iter()
                .position(|s| s.get("type") == Some(&"null".into()))
        {
            return Shape::Optional {
                inner: Some(&any_of[1 - null_at]),
            };
        }
        if let Some(variants) = self.variants(node) {
            return Shape::Enum { variants };
        }
        if let Some(properties) = node.get("properties").and_then(Value::as_object) {
            return Shape::Struct { properties };
        }
        Shape::Other
    }

    /// The variants of an externally tagged enum, or None if `node` is not one.
    fn variants(&self, node: &'s Value) -> Option<Vec<Variant<'s>>> {
        let branches: Vec<&Value> = match (node.get("oneOf"), node.get("enum")) {
            (Some(Value::Array(b)), _) => b.iter().collect(),
            (None, Some(_)) => vec![node],
            _ => return None,
        };
        let mut variants = vec![];
        for branch in branches {
            let branch = self.resolve(branch);
            if let Some(c) = branch.get("const").and_then(Value::as_str) {
                variants.push(Variant {
                    name: c,
                    body: None,
                });
            } else if let Some(names) = branch.get("enum").and_then(Value::as_array) {
                for n in names {
                    variants.push(Variant {
                        name: n.as_str()?,
                        body: None,
                    });
                }
            } else {
                let properties = branch.get("properties")?.as_object()?;
                let required = branch.get("required")?.as_array()?;
                if properties.len() != 1 || required.len() != 1 {
                    return None;
                }
                let (name, body) = properties.iter().next()?;
                variants.push(Variant {
                    name,
                    body: Some(body),
                });
            }
        }
        Some(variants)
    }

    /// A short human description of what `node` accepts, for "expected ..." messages.
    pub fn describe(&self, node: &'s Value) -> String {
        match self.shape(node) {
            Shape::Struct { .. } => "a struct `(field: value, ...)`".into(),
            Shape::Enum { variants } => {
                let names: Vec<String> = variants.iter().map(|v| format!("`{}`", v.name)).collect();
                format!("one of {}", names.join(", "))
            }
            Shape::Optional { inner: Some(inner) } => {
                format!("`None` or {}", self.describe(inner))
            }
            Shape::Optional { inner: None } | Shape::Other => {
                let node = self.resolve(node);
                let types: Vec<&str> = match node.get("type") {
                    Some(Value::String(t)) => vec![t.as_str()],
                    Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
                    _ => vec![],
                };
                let words: Vec<String> = types
                    .iter()
                    .map(|t| match *t {
                        "integer" if node.get("minimum") == Some(&0.into()) => {
                            "a non-negative integer".to_string()
                        }
                        "integer" => "an integer".into(),
                        "number" => "a number".into(),
                        "string" => "a string".into(),
                        "boolean" => "`true` or `false`".into(),
                        "null" => "`None`".into(),
                        "array" if node.get("prefixItems").is_some() => {
                            let n = node["prefixItems"].as_array().map_or(0, Vec::len);
                            format!("a tuple of {n} values `(a, b)`")
                        }
                        "array" => "a list `[...]`".into(),
                        other => other.into(),
                    })
                    .collect();
                if words.is_empty() {
                    "a value".into()
                } else {
                    words.join(" or ")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_sees_enums_structs_and_options() {
        let root = experiment();
        let r = Reader::new(&root);
        let Shape::Struct { properties } = r.shape(&root) else {
            panic!("the experiment is a struct")
        };
        let Shape::Enum { variants } = r.shape(&properties["sampler"]) else {
            panic!("sampler is an enum")
        };
        let names: Vec<_> = variants.iter().map(|v| v.name).collect();
        assert_eq!(names, ["Uniform", "LowDiscrepancy"]);
        let Shape::Enum { variants } = r.shape(&properties["dataset"]) else {
            panic!("dataset is an enum")
        };
        assert!(variants.iter().all(|v| v.body.is_some()));
        let Shape::Struct { properties: train } = r.shape(&properties["train"]) else {
            panic!("train is a struct")
        };
        let Shape::Struct { properties: ckpt } = r.shape(&train["checkpoint"]) else {
            panic!("checkpoint is a struct")
        };
        assert!(matches!(r.shape(&ckpt["every"]), Shape::Optional { .. }));
        assert_eq!(r.describe(&train["betas"]), "a tuple of 2 values `(a, b)`");
    }
}
