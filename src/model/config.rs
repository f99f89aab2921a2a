//! The sizes of a DiT, from the experiment's `network` section and the vocabulary.

use anyhow::{Result, bail};
use burn::config::Config;

use crate::spec;

/// Everything needed to build a [`Dit`](super::Dit). The weights do not store the dropout
/// probability, so it travels here.
#[derive(Config, Debug, PartialEq)]
pub struct DitConfig {
    /// K = vocabulary size + 1; the mask token is K − 1.
    pub num_classes: usize,
    /// Width d of the residual stream.
    pub n_embed: usize,
    pub n_heads: usize,
    pub n_blocks: usize,
    /// Width of the time-conditioning vector.
    pub n_cond: usize,
    /// Dropout on the attention and MLP branches (training only).
    pub dropout: f64,
}

impl DitConfig {
    /// The network of an experiment for a vocabulary of `vocab_size` tokens (K = vocab + 1).
    pub fn from_spec(network: &spec::Network, vocab_size: usize) -> Result<Self> {
        let config = DitConfig {
            num_classes: vocab_size + 1,
            n_embed: network.n_embed,
            n_heads: network.n_heads,
            n_blocks: network.n_blocks,
            n_cond: network.n_cond,
            dropout: network.dropout,
        };
        config.check()?;
        Ok(config)
    }

    /// Rejects sizes the architecture cannot have.
    pub fn check(&self) -> Result<()> {
        if self.num_classes < 2 {
            bail!(
                "the network needs at least one token and the mask (K = {})",
                self.num_classes
            );
        }
        if self.n_heads == 0 || !self.n_embed.is_multiple_of(self.n_heads) {
            bail!(
                "network.n_heads = {} must divide network.n_embed = {}",
                self.n_heads,
                self.n_embed
            );
        }
        if !self.head_dim().is_multiple_of(2) {
            bail!(
                "the head dimension n_embed / n_heads = {} / {} = {} must be even (rotary embedding)",
                self.n_embed,
                self.n_heads,
                self.head_dim()
            );
        }
        if self.n_blocks == 0 || self.n_cond == 0 {
            bail!("network.n_blocks and network.n_cond must be at least 1");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("network.dropout = {} must be in [0, 1)", self.dropout);
        }
        Ok(())
    }

    /// Number of trainable parameters.
    pub fn param_count(&self) -> usize {
        self.param_specs()
            .iter()
            .map(|p| p.shape.iter().product::<usize>())
            .sum()
    }

    pub fn head_dim(&self) -> usize {
        self.n_embed / self.n_heads
    }

    /// The id of the mask token, K − 1.
    pub fn mask_id(&self) -> usize {
        self.num_classes - 1
    }

    /// The network section of an experiment with these sizes.
    pub fn to_spec(&self) -> spec::Network {
        spec::Network {
            n_embed: self.n_embed,
            n_heads: self.n_heads,
            n_blocks: self.n_blocks,
            n_cond: self.n_cond,
            dropout: self.dropout,
        }
    }
}
