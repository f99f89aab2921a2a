//! Checks on an experiment: JSON-Schema validation of the document (types, ranges, required
//! fields) and the semantic rules a schema cannot express (relations between fields).

use jsonschema::error::TypeKind;
use jsonschema::error::ValidationErrorKind;
use serde_json::Value as Json;

use super::Experiment;
use super::diagnostics::Diagnostic;
use super::document::Document;

/// Validates the document against the schema; one diagnostic per violation, located.
pub fn against_schema(doc: &Document, validator: &jsonschema::Validator) -> Vec<Diagnostic> {
    validator
        .iter_errors(&doc.json)
        .flat_map(|e| describe(doc, &e))
        .collect()
}

fn describe(doc: &Document, error: &jsonschema::ValidationError) -> Vec<Diagnostic> {
    let pointer = error.instance_path().as_str().to_string();
    let location = doc.locate(&pointer);
    let span = location.map_or(0..0, |l| l.span.clone());
    let path = location.map_or(String::new(), |l| l.path.clone());
    let found = location.map_or_else(|| error.instance().to_string(), |l| l.found.clone());
    let d = |message: String| Diagnostic::error(span.clone(), &path, message);
    let limit = |v: &Json| v.to_string();
    vec![match error.kind() {
        ValidationErrorKind::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(t) => article(&t.to_string()),
                TypeKind::Multiple(ts) => ts
                    .iter()
                    .map(|t| article(&t.to_string()))
                    .collect::<Vec<_>>()
                    .join(" or "),
            };
            d("wrong type".into()).expected(expected).found(found)
        }
        ValidationErrorKind::Minimum { limit: l } => d(format!("must be at least {}", limit(l)))
            .expected(format!("a value ≥ {}", limit(l)))
            .found(found),
        ValidationErrorKind::ExclusiveMinimum { limit: l } => {
            d(format!("must be greater than {}", limit(l)))
                .expected(format!("a value > {}", limit(l)))
                .found(found)
        }
        ValidationErrorKind::Maximum { limit: l } => d(format!("must be at most {}", limit(l)))
            .expected(format!("a value ≤ {}", limit(l)))
            .found(found),
        ValidationErrorKind::ExclusiveMaximum { limit: l } => {
            d(format!("must be less than {}", limit(l)))
                .expected(format!("a value < {}", limit(l)))
                .found(found)
        }
        ValidationErrorKind::MinItems { limit: l } => d(format!(
            "needs at least {l} entr{}",
            if *l == 1 { "y" } else { "ies" }
        ))
        .found(found),
        ValidationErrorKind::MaxItems { limit: l } => {
            d(format!("takes at most {l} entries")).found(found)
        }
        ValidationErrorKind::MinLength { limit: l } => {
            d(format!("must be at least {l} characters long")).found(found)
        }
        ValidationErrorKind::MaxLength { limit: l } => {
            d(format!("must be at most {l} characters long")).found(found)
        }
        ValidationErrorKind::Pattern { pattern } => d("has characters that are not allowed".into())
            .expected(format!("text matching {pattern}"))
            .found(found)
            .help("use letters, digits, `_`, `.` and `-`, starting with a letter or digit"),
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            let field = if path.is_empty() {
                name.to_string()
            } else {
                format!("{path}.{name}")
            };
            Diagnostic::error(
                span.clone(),
                &field,
                format!("missing required field `{name}`"),
            )
        }
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            d(format!("unknown field(s): {}", unexpected.join(", ")))
        }
        // An enum variant whose body is invalid: report the errors of the branch that
        // matches the variant written, which is the one whose errors reach deepest.
        ValidationErrorKind::OneOfNotValid { context } | ValidationErrorKind::AnyOf { context } => {
            let deepest = context.iter().max_by_key(|branch| {
                branch
                    .iter()
                    .map(|e| e.instance_path().as_str().len())
                    .max()
                    .unwrap_or(0)
            });
            match deepest {
                Some(branch)
                    if branch
                        .iter()
                        .any(|e| e.instance_path().as_str().len() > pointer.len()) =>
                {
                    return branch.iter().flat_map(|e| describe(doc, e)).collect();
                }
                _ => d("does not match any allowed form".into()).found(found),
            }
        }
        _ => d(error.to_string()).found(found),
    }]
}

fn article(json_type: &str) -> String {
    match json_type {
        "integer" => "an integer".into(),
        "array" => "a list or tuple".into(),
        "object" => "a struct `(..)`".into(),
        "null" => "`None`".into(),
        "boolean" => "`true` or `false`".into(),
        other => format!("a {other}"),
    }
}

/// MDLM's eps and t_min above these values get a warning (see [`semantic`]).
const MAX_QUIET_EPS: f64 = 0.01;
const MAX_QUIET_T_MIN: f64 = 0.05;

/// A semantic problem: the dotted path it concerns and the message.
pub struct Problem {
    pub path: &'static str,
    pub message: String,
    pub expected: Option<String>,
    pub found: Option<String>,
    /// A warning leaves the file valid.
    pub warning: bool,
}

fn problem(path: &'static str, message: String) -> Problem {
    Problem {
        path,
        message,
        expected: None,
        found: None,
        warning: false,
    }
}

/// Rules that relate fields to each other, or that no schema keyword expresses.
pub fn semantic(e: &Experiment) -> Vec<Problem> {
    let mut problems = vec![];
    if let Some(reserved) = super::RESERVED_NAMES
        .iter()
        .find(|r| r.eq_ignore_ascii_case(&e.name))
    {
        problems.push(Problem {
            expected: Some(format!(
                "a name other than {}",
                super::RESERVED_NAMES
                    .map(|n| format!("`{n}`"))
                    .join(" and ")
            )),
            found: Some(format!("{:?}", e.name)),
            ..problem(
                "name",
                format!(
                    "`{reserved}` is the folder ddexp keeps its own files in under results/; \
                     runs of this experiment would mix with them"
                ),
            )
        });
    }
    let world = (e.topology.devices.len() as u64).checked_mul(e.topology.nodes as u64);
    let global = world
        .and_then(|w| w.checked_mul(e.train.batch_size as u64))
        .and_then(|b| b.checked_mul(e.train.grad_accum as u64));
    match global {
        Some(g) if g <= super::limits::MAX_GLOBAL_BATCH => {
            let run_tokens = g
                .checked_mul(e.dataset.seq_len() as u64)
                .and_then(|t| t.checked_mul(e.train.max_iters));
            if run_tokens.is_none() {
                problems.push(Problem {
                    expected: Some("global batch × seq_len × max_iters below 2^64 tokens".into()),
                    found: Some(format!(
                        "{g} × {} × {}",
                        e.dataset.seq_len(),
                        e.train.max_iters
                    )),
                    ..problem(
                        "train.max_iters",
                        "the run would see more tokens than its counter holds".into(),
                    )
                });
            }
        }
        _ => problems.push(Problem {
            expected: Some(format!(
                "at most {} sequences per optimiser step",
                super::limits::MAX_GLOBAL_BATCH
            )),
            found: Some(format!(
                "batch_size {} × grad_accum {} × {} device(s) × {} node(s)",
                e.train.batch_size,
                e.train.grad_accum,
                e.topology.devices.len(),
                e.topology.nodes
            )),
            ..problem(
                "train.grad_accum",
                "the global batch is too large: a diffusion time is drawn for each of its \
                 sequences every step"
                    .into(),
            )
        }),
    }
    let n = &e.network;
    if !n.n_embed.is_multiple_of(n.n_heads) {
        problems.push(Problem {
            expected: Some(format!("a divisor of network.n_embed ({})", n.n_embed)),
            found: Some(n.n_heads.to_string()),
            ..problem("network.n_heads", "n_heads must divide n_embed".into())
        });
    } else if !n.head_dim().is_multiple_of(2) {
        problems.push(Problem {
            expected: Some(
                "an even head dimension n_embed / n_heads (rotary embedding rotates pairs)".into(),
            ),
            found: Some(format!("{} / {} = {}", n.n_embed, n.n_heads, n.head_dim())),
            ..problem("network.n_heads", "the head dimension must be even".into())
        });
    }
    if let super::Process::Mdlm { eps, t_min, .. } = e.model {
        // The bound leaves out the prior term at t = 1, where a fraction eps of the tokens is
        // still unmasked under the forward process while sampling starts from all-mask.
        if eps > MAX_QUIET_EPS {
            problems.push(Problem {
                warning: true,
                expected: Some(format!("at most {MAX_QUIET_EPS} (MDLM uses 1e-3)")),
                found: Some(eps.to_string()),
                ..problem(
                    "model.eps",
                    format!(
                        "a fraction eps of the tokens survives to t = 1, where sampling starts \
                         from all-mask, and the NELBO leaves that mismatch out: with eps = {eps} \
                         the bound and the sampler describe different models"
                    ),
                )
            });
        }
        // Evaluation unmasks every position still masked at t_min in one jump, which only
        // stands for the continuous process when few positions are masked there.
        if t_min > MAX_QUIET_T_MIN {
            problems.push(Problem {
                warning: true,
                expected: Some(format!("at most {MAX_QUIET_T_MIN} (MDLM uses 1e-3)")),
                found: Some(t_min.to_string()),
                ..problem(
                    "model.t_min",
                    format!(
                        "training never sees t < t_min, and evaluation reconstructs every \
                         position masked at t_min = {t_min} in one step"
                    ),
                )
            });
        }
    }
    let t = &e.train;
    if t.min_lr > t.lr {
        problems.push(Problem {
            expected: Some(format!("at most train.lr ({})", t.lr)),
            found: Some(t.min_lr.to_string()),
            ..problem("train.min_lr", "min_lr must not exceed lr".into())
        });
    }
    if t.warmup_iters >= t.max_iters {
        problems.push(Problem {
            expected: Some(format!("fewer than train.max_iters ({})", t.max_iters)),
            found: Some(t.warmup_iters.to_string()),
            ..problem(
                "train.warmup_iters",
                "warm-up must end before the last iteration".into(),
            )
        });
    }
    for (which, beta) in [("beta1", t.betas.0), ("beta2", t.betas.1)] {
        if !(0.0..1.0).contains(&beta) {
            problems.push(Problem {
                expected: Some("a value in [0, 1)".into()),
                found: Some(beta.to_string()),
                ..problem("train.betas", format!("AdamW {which} must be in [0, 1)"))
            });
        }
    }
    if t.eval_interval > t.max_iters {
        problems.push(Problem {
            warning: true,
            ..problem(
                "train.eval_interval",
                format!(
                    "longer than the run (max_iters {}): no validation before the end",
                    t.max_iters
                ),
            )
        });
    }
    if t.log_interval > t.max_iters {
        problems.push(Problem {
            warning: true,
            ..problem(
                "train.log_interval",
                format!(
                    "longer than the run (max_iters {}): train.csv stays empty",
                    t.max_iters
                ),
            )
        });
    }
    let mut splits = e.eval.splits.clone();
    splits.sort();
    if splits.windows(2).any(|w| w[0] == w[1]) {
        problems.push(problem("eval.splits", "a split is listed twice".into()));
    }
    let mut devices = e.topology.devices.clone();
    devices.sort();
    if devices.windows(2).any(|w| w[0] == w[1]) {
        problems.push(Problem {
            found: Some(format!("{:?}", e.topology.devices)),
            ..problem("topology.devices", "a device is listed twice".into())
        });
    }
    if let Some(address) = &e.topology.orchestrator
        && let Err(err) = super::split_host_port(address)
    {
        problems.push(Problem {
            expected: Some("host:port of node 0, e.g. \"10.0.0.1:29500\"".into()),
            found: Some(format!("{address:?}")),
            ..problem("topology.orchestrator", format!("not an address: {err}"))
        });
    }
    if let super::Dataset::Synthetic {
        seq_len,
        eval_tokens,
        train_tokens,
        ..
    } = &e.dataset
    {
        for (tokens, field, splits) in [
            (train_tokens, "train_tokens", "the train split"),
            (eval_tokens, "eval_tokens", "the val and test splits"),
        ] {
            if seq_len >= tokens {
                problems.push(Problem {
                    expected: Some(format!("less than dataset.{field} ({tokens})")),
                    found: Some(seq_len.to_string()),
                    ..problem("dataset.seq_len", format!("sequences must fit in {splits}"))
                });
            }
        }
    }
    if !e.topology.backend.is_built() {
        problems.push(Problem {
            warning: true,
            ..problem("topology.backend", e.topology.backend.missing_message())
        });
    }
    problems
}

/// How to write text in RON, on a command line too (shells eat unprotected double quotes).
pub(crate) fn quote_help(path: &str, text: &str) -> String {
    format!(
        "RON strings are in double quotes: {path}: \"{text}\" in a file, \
         --set '{path}=\"{text}\"' on a command line"
    )
}
