//! ddexp: train, evaluate and sample discrete diffusion language models from declarative
//! experiment files.
//!
//! The modules follow the pipeline: an experiment [`spec`] names the data ([`data`]), the
//! network ([`model`]), the process ([`diffusion`]) and the recipe; [`train`] runs it,
//! [`eval`] measures bits/token and [`sample`] draws text from a [`trained`] model,
//! [`results`] writes and compares run folders. The CLI
//! ([`cli`]) only parses arguments and calls into the library.

pub mod backend;
pub mod cli;
pub mod data;
pub mod diffusion;
pub mod eval;
pub mod model;
pub mod results;
pub mod rng;
pub mod sample;
pub mod spec;
pub mod train;
pub mod trained;
