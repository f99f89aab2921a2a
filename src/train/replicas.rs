//! Keeping the model replicas of a data-parallel run identical.
//!
//! Replicas start from one state: once every peer has joined, the main replica (global rank
//! 0, which owns the run folder and the checkpoint a resumed run starts from) sends its
//! weights, EMA weights, optimiser moments and counters to the others, as one sum to which
//! every other peer contributes zeros (burn-collective 0.21 has no broadcast between nodes).
//! Two small sums before it check that every peer runs the same experiment and that every
//! rank is taken exactly once.
//!
//! Each step, every replica backpropagates its share of the global batch scaled by
//! 1/(grad_accum · world), and one sum of [every gradient in module order, the loss sums,
//! the stop requests] gives every replica the gradient of the global mean loss, the
//! statistics of the global batch and the agreement to stop. The same numbers then go
//! through the same clipping, AdamW step and EMA update everywhere, so the weights stay equal
//! bit for bit; a non-finite loss or norm is seen by every replica at the same step.

use anyhow::{Result, bail};
use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use sha2::{Digest, Sha256};

use super::collective::Peer;
use super::trainer::State;
use super::validation::{summarise_validation, validation_batch, validation_loss};
use crate::data::Corpus;
use crate::diffusion::{Bound, Diffusion, LossStats};
use crate::model::Dit;
use crate::spec::{self, Experiment};

/// Sums gradients (in place), loss statistics and stop requests over all peers. `what`
/// names the step in error messages.
pub fn reduce_step<B: AutodiffBackend>(
    peer: &Peer<B::InnerBackend>,
    model: &Dit<B>,
    grads: &mut GradientsParams,
    stats: LossStats,
    stop: bool,
    what: &str,
) -> Result<(LossStats, bool)> {
    if peer.world() == 1 {
        return Ok((stats, stop));
    }
    let mut gather = Gather::<B::InnerBackend> {
        grads,
        parts: vec![],
    };
    model.visit(&mut gather);
    let mut parts = gather.parts;
    let Some(device) = parts.first().map(|p| p.device()) else {
        bail!("no gradients to reduce");
    };
    let mut tail: Vec<f32> = stats_values(&stats).iter().map(|&v| v as f32).collect();
    tail.push(if stop { 1.0 } else { 0.0 });
    let n_tail = tail.len();
    parts.push(Tensor::from_data(TensorData::new(tail, [n_tail]), &device));
    let flat = Tensor::cat(parts, 0);
    let len = flat.dims()[0];
    let summed = peer.sum(flat, what)?;
    let tail: Vec<f64> = summed
        .clone()
        .narrow(0, len - n_tail, n_tail)
        .into_data()
        .convert::<f64>()
        .to_vec()
        .expect("f64 values");
    let mut scatter = Scatter::<B::InnerBackend> {
        grads,
        flat: summed,
        offset: 0,
    };
    model.visit(&mut scatter);
    Ok((
        stats_from_values(stats.bound, &tail),
        tail[n_tail - 1] > 0.0,
    ))
}

/// The validation pass shared by the peers, in rounds: in round r peer k evaluates batch
/// r·world + k, and one sum gathers the round's statistics and the peers' stop requests, so
/// every peer stops after the same round when one was asked to (`None`). The statistics are
/// then summarised in batch order, as on one device.
pub fn validate<B: Backend>(
    peer: &Peer<B>,
    net: &Dit<B>,
    diffusion: &Diffusion,
    corpus: &Corpus,
    batches: u64,
    batch_size: usize,
    stop: &dyn Fn() -> bool,
) -> Result<Option<(LossStats, f64)>> {
    let (rank, world) = (peer.rank() as u64, peer.world() as u64);
    if world == 1 {
        return Ok(validation_loss(
            net, diffusion, corpus, batches, batch_size, stop,
        ));
    }
    let slots = STATS_VALUES * world as usize;
    let mut all = vec![];
    for first in (0..batches).step_by(world as usize) {
        let mut values = vec![0.0; slots + 1];
        let mine = first + rank;
        if mine < batches {
            let stats = validation_batch(net, diffusion, corpus, mine, batch_size);
            let at = rank as usize * STATS_VALUES;
            values[at..at + STATS_VALUES].copy_from_slice(&stats_values(&stats));
        }
        values[slots] = if stop() { 1.0 } else { 0.0 };
        let sums = peer.sum_values(&values, "sharing the validation pass")?;
        if sums[slots] > 0.0 {
            return Ok(None);
        }
        let done = (batches - first).min(world) as usize;
        all.extend(
            sums[..STATS_VALUES * done]
                .chunks(STATS_VALUES)
                .map(|v| stats_from_values(diffusion.bound(), v)),
        );
    }
    Ok(Some(summarise_validation(&all)))
}

/// Whether any peer says yes (one sum), for decisions every replica must take together.
pub fn any<B: Backend>(peer: &Peer<B>, yes: bool, what: &str) -> Result<bool> {
    if peer.world() == 1 {
        return Ok(yes);
    }
    let sums = peer.sum_values(&[if yes { 1.0 } else { 0.0 }], what)?;
    Ok(sums[0] > 0.0)
}

/// Makes every replica's state a copy of rank 0's, after checking that all peers run the
/// same experiment and hold distinct ranks.
pub fn synchronise<B: AutodiffBackend>(
    state: &mut State<B>,
    experiment: &Experiment,
    peer: &Peer<B::InnerBackend>,
) -> Result<()> {
    let world = peer.world();
    let root = peer.rank() == 0;

    let own = fingerprint(experiment);
    let mut values = vec![0.0; 2 * own.len()];
    for (i, &byte) in own.iter().enumerate() {
        if root {
            values[i] = f64::from(byte);
        }
        values[own.len() + i] = f64::from(byte);
    }
    let sums = peer.sum_values(&values, "comparing the experiments")?;
    let (roots, all) = sums.split_at(own.len());
    if roots
        .iter()
        .zip(all)
        .any(|(r, a)| a - r * world as f64 != 0.0)
    {
        bail!(
            "the nodes do not run the same experiment (their resolved experiments differ): start every node with the same experiment file and the same --set overrides (only topology.orchestrator may differ)"
        );
    }

    let paths = param_paths(&state.model);
    let counters = [
        state.iteration,
        state.tokens,
        state.ema.updates,
        state.optimizer.steps(),
    ];
    let mut values = vec![0.0; world + 4 * counters.len() + paths.len()];
    values[peer.rank()] = 1.0;
    if root {
        let meta = &mut values[world..];
        for (i, &c) in counters.iter().enumerate() {
            for k in 0..4 {
                meta[4 * i + k] = ((c >> (16 * k)) & 0xffff) as f64;
            }
        }
        for (i, path) in paths.iter().enumerate() {
            if state.optimizer.moments_of(path).is_some() {
                meta[4 * counters.len() + i] = 1.0;
            }
        }
    }
    let sums = peer.sum_values(&values, "agreeing on ranks")?;
    let missing: Vec<usize> = (0..world).filter(|&r| sums[r] == 0.0).collect();
    let doubled: Vec<usize> = (0..world).filter(|&r| sums[r] > 1.0).collect();
    if !missing.is_empty() || !doubled.is_empty() {
        bail!(
            "ranks {doubled:?} are taken twice and ranks {missing:?} by no one: every node needs its own --node-rank (0 to topology.nodes − 1)"
        );
    }
    let meta = &sums[world..];
    let counter = |i: usize| -> u64 { (0..4).map(|k| (meta[4 * i + k] as u64) << (16 * k)).sum() };
    let [iteration, tokens, ema_updates, optimizer_steps] = [0, 1, 2, 3].map(counter);
    let with_moments: Vec<bool> = (0..paths.len())
        .map(|i| meta[4 * counters.len() + i] > 0.0)
        .collect();

    // The state itself: weights, EMA weights, then (m, v) of each parameter that has them.
    let model = state.model.valid();
    let sizes = param_sizes(&model);
    let total: usize = sizes.iter().sum::<usize>() * 2
        + sizes
            .iter()
            .zip(&with_moments)
            .filter(|(_, has)| **has)
            .map(|(n, _)| 2 * n)
            .sum::<usize>();
    let device = model.devices()[0].clone();
    let flat = if root {
        let mut parts = flat_params(&model);
        parts.extend(flat_params(&state.ema.weights));
        for path in &paths {
            if let Some((m, v)) = state.optimizer.moments_of(path) {
                parts.extend([m, v]);
            }
        }
        Tensor::cat(parts, 0)
    } else {
        Tensor::zeros([total], &device)
    };
    let flat = peer.sum(flat, "copying the state of rank 0")?;

    let n_params: usize = sizes.iter().sum();
    let take = |from: usize, n: usize| flat.clone().narrow(0, from, n);
    state.model = load_trainable(state.model.clone(), take(0, n_params));
    let ema = load_params(state.ema.weights.clone(), take(n_params, n_params));
    state.ema = super::ema::Ema::resume(ema, ema_updates, &experiment.train.ema);
    let mut moments = vec![];
    let mut at = 2 * n_params;
    for ((path, &n), &has) in paths.iter().zip(&sizes).zip(&with_moments) {
        if has {
            moments.push((path.clone(), take(at, n), take(at + n, n)));
            at += 2 * n;
        }
    }
    state.optimizer.restore(optimizer_steps, moments);
    state.iteration = iteration;
    state.tokens = tokens;
    Ok(())
}

/// A short digest of the experiment as every node must run it (the orchestrator address
/// may differ: one node can take it from the file, another from its command line).
fn fingerprint(experiment: &Experiment) -> [u8; 8] {
    let mut e = experiment.clone();
    e.topology.orchestrator = None;
    let digest = Sha256::digest(spec::to_ron(&e).as_bytes());
    digest[..8].try_into().expect("8 bytes of a SHA-256")
}

/// The numbers of [`LossStats`] that add up over batches and replicas.
const STATS_VALUES: usize = 7;

fn stats_values(s: &LossStats) -> [f64; STATS_VALUES] {
    [
        s.tokens as f64,
        s.loss_sum,
        s.kl_tokens as f64,
        s.kl_sum,
        s.ce_sum,
        s.recon_tokens as f64,
        s.recon_sum,
    ]
}

fn stats_from_values(bound: Bound, v: &[f64]) -> LossStats {
    LossStats {
        bound,
        tokens: v[0].round() as usize,
        loss_sum: v[1],
        kl_tokens: v[2].round() as usize,
        kl_sum: v[3],
        ce_sum: v[4],
        recon_tokens: v[5].round() as usize,
        recon_sum: v[6],
    }
}

/// Every gradient, flattened, in module order.
struct Gather<'a, B: Backend> {
    grads: &'a GradientsParams,
    parts: Vec<Tensor<B, 1>>,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for Gather<'_, AB::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        if let Some(g) = self.grads.get::<AB::InnerBackend, D>(param.id) {
            let n = g.shape().num_elements();
            self.parts.push(g.reshape([n]));
        }
    }
}

/// Puts the summed gradients back, in the order [`Gather`] took them.
struct Scatter<'a, B: Backend> {
    grads: &'a mut GradientsParams,
    flat: Tensor<B, 1>,
    offset: usize,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for Scatter<'_, AB::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        if let Some(g) = self.grads.remove::<AB::InnerBackend, D>(param.id) {
            let shape = g.shape();
            let n = shape.num_elements();
            let summed: Tensor<AB::InnerBackend, D> =
                self.flat.clone().narrow(0, self.offset, n).reshape(shape);
            self.offset += n;
            self.grads.register(param.id, summed);
        }
    }
}

/// The module path of every float parameter (`blocks.0.attn_qkv.weight`), in module order,
/// as the optimiser names its moments.
pub(super) fn param_paths<B: Backend, M: Module<B>>(module: &M) -> Vec<String> {
    struct Paths {
        stack: Vec<String>,
        paths: Vec<String>,
    }
    impl<B: Backend> ModuleVisitor<B> for Paths {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.stack.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.stack.pop();
        }
        fn visit_float<const D: usize>(&mut self, _param: &Param<Tensor<B, D>>) {
            self.paths.push(self.stack.join("."));
        }
    }
    let mut visitor = Paths {
        stack: vec![],
        paths: vec![],
    };
    module.visit(&mut visitor);
    visitor.paths
}

/// Element counts of every float parameter, in module order.
pub(super) fn param_sizes<B: Backend, M: Module<B>>(module: &M) -> Vec<usize> {
    flat_params(module).iter().map(|p| p.dims()[0]).collect()
}

/// Every float parameter, flattened, in module order.
fn flat_params<B: Backend, M: Module<B>>(module: &M) -> Vec<Tensor<B, 1>> {
    struct Flat<B: Backend>(Vec<Tensor<B, 1>>);
    impl<B: Backend> ModuleVisitor<B> for Flat<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let t = param.val();
            let n = t.shape().num_elements();
            self.0.push(t.reshape([n]));
        }
    }
    let mut visitor = Flat(vec![]);
    module.visit(&mut visitor);
    visitor.0
}

/// `module` with its float parameters read in module order from `flat` (ids kept).
fn load_params<B: Backend, M: Module<B>>(module: M, flat: Tensor<B, 1>) -> M {
    struct Load<B: Backend> {
        flat: Tensor<B, 1>,
        offset: usize,
    }
    impl<B: Backend> ModuleMapper<B> for Load<B> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, tensor, mapper) = param.consume();
            let shape = tensor.shape();
            let n = shape.num_elements();
            let value = self.flat.clone().narrow(0, self.offset, n).reshape(shape);
            self.offset += n;
            Param::from_mapped_value(id, value, mapper)
        }
    }
    module.map(&mut Load { flat, offset: 0 })
}

/// [`load_params`] for a module being trained: the values stay parameters that require
/// gradients.
fn load_trainable<AB: AutodiffBackend, M: AutodiffModule<AB>>(
    module: M,
    flat: Tensor<AB::InnerBackend, 1>,
) -> M {
    struct Load<B: Backend> {
        flat: Tensor<B, 1>,
        offset: usize,
    }
    impl<AB: AutodiffBackend> ModuleMapper<AB> for Load<AB::InnerBackend> {
        fn map_float<const D: usize>(
            &mut self,
            param: Param<Tensor<AB, D>>,
        ) -> Param<Tensor<AB, D>> {
            let (id, tensor, mapper) = param.consume();
            let (shape, require_grad) = (tensor.shape(), tensor.is_require_grad());
            let n = shape.num_elements();
            let value: Tensor<AB::InnerBackend, D> =
                self.flat.clone().narrow(0, self.offset, n).reshape(shape);
            self.offset += n;
            let value = Tensor::from_inner(value).set_require_grad(require_grad);
            Param::from_mapped_value(id, value, mapper)
        }
    }
    module.map(&mut Load { flat, offset: 0 })
}

#[cfg(test)]
mod tests {
    use super::super::collective::Group;
    use super::super::trainer::{State, step};
    use super::*;
    use crate::model::DitConfig;
    use burn::backend::{Autodiff, Flex};
    use std::time::Duration;

    type B = Autodiff<Flex>;

    fn experiment(devices: &str, batch: usize, accum: usize, dropout: f64) -> Experiment {
        let text = format!(
            r#"(
                name: "replicas",
                seed: 5,
                network: (n_embed: 16, n_heads: 2, n_blocks: 1, n_cond: 8, dropout: {dropout}),
                dataset: Synthetic(seq_len: 8, train_tokens: 5000, eval_tokens: 1000),
                sampler: LowDiscrepancy,
                train: (batch_size: {batch}, grad_accum: {accum}, max_iters: 20, warmup_iters: 1, lr: 3e-3, grad_clip: 0.05),
                topology: (devices: {devices}),
            )"#
        );
        spec::load_str(std::path::Path::new("replicas.ron"), &text, &[])
            .unwrap()
            .experiment
    }

    /// Per replica, per step: the global loss and the replica's weights after the step.
    type Trace = Vec<Vec<(f64, Vec<f32>)>>;

    /// Trains every replica of `experiment` for `steps` steps, each on a thread of its own.
    fn train(experiment: &Experiment, steps: usize) -> Trace {
        let corpus = crate::data::open(&experiment.dataset).unwrap();
        let vocab = corpus.vocab().size();
        let config = DitConfig::from_spec(&experiment.network, vocab).unwrap();
        let diffusion = Diffusion::new(&experiment.model, vocab);
        let world = experiment.topology.world_size();
        let group;
        let peers = if world == 1 {
            vec![Peer::solo()]
        } else {
            group = Group::new(0, world, world, None, Duration::from_secs(60)).unwrap();
            group.peers()
        };
        std::thread::scope(|scope| {
            let handles: Vec<_> = peers
                .into_iter()
                .map(|mut peer| {
                    let (corpus, config, diffusion) = (&corpus, &config, &diffusion);
                    scope.spawn(move || {
                        let device = Default::default();
                        let mut state = State::<B>::fresh(experiment, config, &device);
                        peer.register(&device).unwrap();
                        if world > 1 {
                            synchronise(&mut state, experiment, &peer).unwrap();
                        }
                        let b = experiment.train.batch_size;
                        let rank = peer.rank() as u64;
                        let mut trace = vec![];
                        for _ in 0..steps {
                            let batch = |it, micro| corpus.train_batch(5, it, micro, rank, b);
                            let report =
                                step(&mut state, experiment, diffusion, 8, batch, &device, &peer)
                                    .unwrap();
                            let weights = Tensor::cat(flat_params(&state.model.valid()), 0);
                            trace
                                .push((report.stats.loss(), weights.into_data().to_vec().unwrap()));
                        }
                        peer.finish().unwrap();
                        trace
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn two_replicas_of_b_rows_train_as_one_of_2b_and_stay_identical() {
        for accum in [1, 2] {
            let steps = 6;
            let two = train(&experiment("[0, 1]", 3, accum, 0.0), steps);
            let one = train(&experiment("[0]", 6, accum, 0.0), steps);
            for k in 0..steps {
                // The replicas hold the same weights, bit for bit, after every step.
                assert_eq!(two[0][k].1, two[1][k].1, "replicas differ after step {k}");
                assert_eq!(two[0][k].0, two[1][k].0);
                let (l2, l1) = (two[0][k].0, one[0][k].0);
                assert!((l2 - l1).abs() <= 1e-5 * l1, "step {k}: loss {l2} vs {l1}");
                let d = max_abs_diff(&two[0][k].1, &one[0][k].1);
                assert!(d <= 1e-5, "step {k}: weights differ by {d}");
                eoutln!("accum {accum} step {k}: loss {l2} vs {l1}, max weight diff {d}");
            }
        }
    }

    #[test]
    fn replicas_with_dropout_repeat_exactly() {
        // Both replicas draw masks from one process-wide generator; the masks must still
        // depend only on (seed, iteration, micro-step, rank).
        let e = experiment("[0, 1]", 2, 1, 0.2);
        let (a, b) = (train(&e, 4), train(&e, 4));
        assert_eq!(a, b);
        assert_eq!(a[0], a[1]);
    }

    #[test]
    fn replicas_of_different_experiments_refuse_to_train() {
        let corpus_for = |e: &Experiment| crate::data::open(&e.dataset).unwrap();
        let a = experiment("[0, 1]", 2, 1, 0.0);
        let mut b = a.clone();
        b.train.lr = 1e-3;
        let group = Group::<Flex>::new(0, 2, 2, None, Duration::from_secs(60)).unwrap();
        let errors: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = group
                .peers()
                .into_iter()
                .zip([&a, &b])
                .map(|(mut peer, e)| {
                    scope.spawn(move || {
                        let vocab = corpus_for(e).vocab().size();
                        let config = DitConfig::from_spec(&e.network, vocab).unwrap();
                        let device = Default::default();
                        let mut state = State::<B>::fresh(e, &config, &device);
                        peer.register(&device).unwrap();
                        let err = synchronise(&mut state, e, &peer).unwrap_err().to_string();
                        peer.finish().unwrap();
                        err
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for e in errors {
            assert!(e.contains("do not run the same experiment"), "{e}");
        }
    }
}
