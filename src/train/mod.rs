//! Training: the optimiser recipe and the weight average.

pub mod ema;
pub mod optimizer;
