//! Helpers shared by the integration tests. Each test file uses a different subset of them.
#![allow(dead_code)]

/// Running the `ddexp` binary and reading what its runs leave.
pub mod cli;
/// Test corpora: a tiny HTTP server on 127.0.0.1 and writers for the input formats.
pub mod data;
/// The nanoDD fixtures recorded from the reference implementation.
pub mod fixtures;
