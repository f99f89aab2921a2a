//! Experiment files: types, loading, schema and validation.

mod types;

pub use types::*;
