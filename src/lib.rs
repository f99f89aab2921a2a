//! ddexp: train, evaluate and sample discrete diffusion language models from declarative
//! experiment files.
//!
//! The modules are listed in pipeline order, and each uses only modules listed before it:
//!
//! - [`output`]: messages on stdout and stderr that never stop the work (a closed pipe);
//! - [`rng`]: counter-based random streams, so every draw is a function of where it happens;
//! - [`backend`]: the compute backends and the one place that picks a Burn backend;
//! - [`spec`]: the experiment file — types, loading, validation, `--set`;
//! - [`data`]: corpora, tokenisers, the token store and batch windows;
//! - [`model`]: the Diffusion Transformer and its weights;
//! - [`diffusion`]: the processes — noise, loss, reverse step, time samplers;
//! - [`memory`]: what a job will need, estimated and checked before anything is allocated;
//! - [`results`]: what a run writes (run folders, CSV logs, charts);
//! - [`checkpoint`]: weights on disk (checkpoints, model folders, nanoDD imports);
//! - [`parity`]: agreement with tensors recorded from the reference implementation;
//! - [`eval`]: bits/token on a split;
//! - [`train`]: the training loop, its topology and `ddexp bench`;
//! - [`sample`]: ancestral sampling;
//! - [`sweep`]: families of experiments;
//! - [`report`]: comparing runs;
//! - [`cli`]: the command line, which only parses arguments and calls the above.

#[macro_use]
pub mod output;

pub mod rng;

pub mod backend;

pub mod spec;

pub mod data;

pub mod model;

pub mod diffusion;

pub mod memory;

pub mod results;

pub mod checkpoint;

pub mod parity;

pub mod eval;

pub mod train;

pub mod sample;

pub mod sweep;

pub mod report;

pub mod cli;
