//! The training loop, generic over the backend: micro-batches with gradient accumulation,
//! clipping, AdamW, EMA, logging, validation, checkpoints, and clean stops.
//!
//! One iteration (optimiser step `it`, counted from 0), in [`step`], on every replica:
//!   for each micro-step: draw this replica's windows, times and noise of (seed, it, micro),
//!   seed dropout, compute the loss, backpropagate loss / (grad_accum · world), accumulate
//!   the gradients; sum gradients, loss statistics and stop requests over the replicas
//!   (see [`super::replicas`]); clip by the global norm; stop if the loss or the norm is not
//!   finite; AdamW step at lr(it); fold the weights into the EMA. Then, in [`train`]:
//!   validate (shared by the replicas), and on the main replica log and checkpoint.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use indicatif::{ProgressBar, ProgressStyle};

use super::collective::Peer;
use super::ema::Ema;
use super::interrupt;
use super::optimizer::{AdamW, clip_grad_norm, learning_rate};
use super::replicas;
use crate::checkpoint::{self, Checkpoint, NET_PREFIX, model_state_dict};
use crate::data::Corpus;
use crate::diffusion::{Diffusion, LossStats, local_times, sample_times};
use crate::model::{Dit, DitConfig, StateDict, WeightSet, seed_dropout, token_tensor};
use crate::results::stats::plus_minus;
use crate::results::{CsvLog, RunDir, TrainRow, ValRow, read_rows};
use crate::rng::{self, Stream};
use crate::spec::Experiment;

/// How a training session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Reached max_iters.
    Completed,
    /// Stopped by Ctrl-C / SIGTERM after saving a checkpoint.
    Interrupted { iteration: u64 },
}

/// Where training starts: fresh weights, or a checkpoint.
pub enum Start {
    Fresh,
    Resume(Box<Checkpoint>),
}

/// What the loop hands back for the final evaluation.
pub struct Outcome<B: AutodiffBackend> {
    pub ending: Ending,
    pub ema: Dit<B::InnerBackend>,
    pub iteration: u64,
}

/// Everything that changes during training (and is saved at a checkpoint).
pub struct State<B: AutodiffBackend> {
    pub model: Dit<B>,
    pub ema: Ema<B::InnerBackend, Dit<B::InnerBackend>>,
    pub optimizer: AdamW<B::InnerBackend>,
    /// Optimiser steps done: the next step is iteration `iteration`.
    pub iteration: u64,
    pub tokens: u64,
    pub best_val_l_t: Option<f64>,
}

impl<B: AutodiffBackend> State<B> {
    /// Freshly initialised weights (from the experiment seed), an empty optimiser.
    pub fn fresh(experiment: &Experiment, config: &DitConfig, device: &B::Device) -> Self {
        let model: Dit<B> = config.init(experiment.seed, device);
        State {
            ema: Ema::new(model.valid(), &experiment.train.ema),
            model,
            optimizer: AdamW::new(&experiment.train),
            iteration: 0,
            tokens: 0,
            best_val_l_t: None,
        }
    }

    fn from_checkpoint(
        config: &DitConfig,
        experiment: &Experiment,
        ckpt: Checkpoint,
        device: &B::Device,
    ) -> Result<Self> {
        let net = |weights: &StateDict, which: &str| {
            let net_weights = weights.strip_prefix(NET_PREFIX);
            Dit::<B>::from_state_dict(config, &net_weights, device).with_context(|| {
                format!("the checkpoint's {which} weights do not fit the experiment")
            })
        };
        let model = net(&ckpt.model, "model")?;
        let ema_weights = net(&ckpt.ema, "EMA")?.valid();
        // Each moment must have its parameter's size: a wrong one would fail deep inside the
        // first AdamW step.
        let sizes: std::collections::HashMap<String, usize> = replicas::param_paths(&model)
            .into_iter()
            .zip(replicas::param_sizes(&ema_weights))
            .collect();
        for (name, data) in &ckpt.optimizer {
            let path = name.split_once('.').map_or(name.as_str(), |(_, p)| p);
            let expected = sizes.get(path);
            if expected.is_none_or(|&n| data.shape.as_slice() != [n]) {
                bail!(
                    "the checkpoint's optimiser moment `{name}` has shape {:?}, expected {}",
                    data.shape.as_slice(),
                    expected.map_or("no such parameter".into(), |n| format!("[{n}]"))
                );
            }
        }
        let mut optimizer = AdamW::new(&experiment.train);
        optimizer.load_state(ckpt.optimizer_steps, ckpt.optimizer, device)?;
        Ok(State {
            model,
            ema: Ema::resume(ema_weights, ckpt.ema_updates, &experiment.train.ema),
            optimizer,
            iteration: ckpt.iteration,
            tokens: ckpt.tokens,
            best_val_l_t: ckpt.best_val_l_t,
        })
    }
}

/// What one optimiser step measured (over the global batch).
pub struct StepReport {
    pub stats: LossStats,
    pub grad_norm: f64,
    pub lr: f64,
    /// Some replica was asked to stop (Ctrl-C): every replica stops after this step.
    pub stop: bool,
    /// A lone replica was asked to stop between two micro-batches: the step was given up
    /// and nothing changed (replicas that share a step finish it, and stop after it).
    pub abandoned: bool,
}

/// One [`step`] of a lone replica, waited for on its device: the step `ddexp bench` and
/// `ddexp doctor` time.
pub fn solo_step<B: AutodiffBackend>(
    state: &mut State<B>,
    experiment: &Experiment,
    diffusion: &Diffusion,
    seq_len: usize,
    batch: impl Fn(u64, u64) -> Vec<u32>,
    device: &B::Device,
) -> Result<()> {
    step(
        state,
        experiment,
        diffusion,
        seq_len,
        batch,
        device,
        &Peer::solo(),
    )?;
    B::sync(device)?;
    Ok(())
}

/// One optimiser step at iteration `state.iteration` for the replica `peer`, reading its
/// micro-batch `micro` of the step from `batch(iteration, micro)` (row-major
/// [batch_size, seq_len] token ids). Fails, without updating the weights, when the loss or
/// the gradient norm of the global batch is not finite.
pub fn step<B: AutodiffBackend>(
    state: &mut State<B>,
    experiment: &Experiment,
    diffusion: &Diffusion,
    seq_len: usize,
    batch: impl Fn(u64, u64) -> Vec<u32>,
    device: &B::Device,
    peer: &Peer<B::InnerBackend>,
) -> Result<StepReport> {
    let t = &experiment.train;
    let (rank, world) = (peer.rank(), peer.world());
    let it = state.iteration;
    let lr = learning_rate(t, it);
    let times = sample_times(
        experiment.sampler,
        experiment.seed,
        it,
        experiment.global_batch(),
        diffusion.training_range(),
    );
    let dropout = experiment.network.dropout > 0.0;
    let mut accumulator = GradientsAccumulator::<Dit<B>>::new();
    let mut stats = LossStats::default();
    for micro in 0..t.grad_accum {
        if micro > 0 && world == 1 && interrupt::requested() {
            return Ok(StepReport {
                stats: LossStats::default(),
                grad_norm: 0.0,
                lr,
                stop: true,
                abandoned: true,
            });
        }
        let local = local_times(&times, micro, rank, world, t.batch_size);
        let x0 = token_tensor::<B>(&batch(it, micro as u64), t.batch_size, seq_len, device);
        let first_row = (rank * t.batch_size) as u64;
        let rows = first_row..first_row + t.batch_size as u64;
        let mut noise = rng::rows(experiment.seed, Stream::Noise, &[it, micro as u64], rows);
        let out = {
            // Only a network with dropout draws from the backend's generator.
            let _draws = dropout
                .then(|| seed_dropout::<B>(device, experiment.seed, it, micro as u64, rank as u64));
            diffusion.loss(&state.model, x0, &local, &mut noise)
        };
        stats.merge(&out.stats());
        let grads = out
            .loss
            .div_scalar((t.grad_accum * world) as f64)
            .backward();
        accumulator.accumulate(
            &state.model,
            GradientsParams::from_grads(grads, &state.model),
        );
    }
    let mut grads = accumulator.grads();
    let (stats, stop) = replicas::reduce_step(
        peer,
        &state.model,
        &mut grads,
        stats,
        interrupt::requested(),
        &format!("all-reduce of iteration {it}"),
    )?;
    let grad_norm = clip_grad_norm(&state.model, &mut grads, t.grad_clip);
    if !stats.loss().is_finite() || !grad_norm.is_finite() {
        let what = if stats.loss().is_finite() {
            "gradient norm"
        } else {
            "loss"
        };
        bail!(
            "non-finite {what} at iteration {it} (loss {}, gradient norm {grad_norm}); the weights were not updated",
            stats.loss()
        );
    }
    state.model = state.optimizer.step(state.model.clone(), &mut grads, lr);
    state.ema.update(state.model.valid());
    state.iteration += 1;
    state.tokens += experiment.tokens_per_iter() as u64;
    Ok(StepReport {
        stats,
        grad_norm,
        lr,
        stop,
        abandoned: false,
    })
}

/// What only the main replica does: the progress bar, the logs and the checkpoints.
struct Main<'a> {
    run: &'a mut RunDir,
    logs: Logs,
    bar: ProgressBar,
    /// Time spent in training steps since the last train.csv row, and how many steps: the
    /// logged speed leaves out validation and checkpoints (val.csv has their own time).
    step_time: Duration,
    steps: u32,
}

/// Trains replica `peer` of `experiment` on `device`. The main replica gets the run folder
/// (`run`) and its starting point (`start`); the others start fresh and receive the main
/// replica's state once every peer has joined. Every replica runs the same iterations, and
/// every one returns its (identical) EMA weights.
pub fn train<B: AutodiffBackend>(
    experiment: &Experiment,
    experiment_ron: &str,
    corpus: &Corpus,
    run: Option<&mut RunDir>,
    start: Start,
    device: &B::Device,
    peer: &mut Peer<B::InnerBackend>,
) -> Result<Outcome<B>> {
    let vocab = corpus.vocab().size();
    let config = DitConfig::from_spec(&experiment.network, vocab)?;
    let diffusion = Diffusion::new(&experiment.model, vocab);
    let t = &experiment.train;
    let mut state: State<B> = match start {
        Start::Fresh => State::fresh(experiment, &config, device),
        Start::Resume(ckpt) => State::from_checkpoint(&config, experiment, *ckpt, device)?,
    };
    peer.register(device)?;
    if peer.world() > 1 {
        replicas::synchronise(&mut state, experiment, peer)?;
    }
    let mut last_checkpoint = match state.iteration {
        0 => None,
        it => Some(it),
    };
    let mut main = match run {
        Some(run) => Some(Main {
            logs: Logs {
                train: run.log::<TrainRow>()?,
                val: run.log::<ValRow>()?,
            },
            run,
            bar: progress_bar(t.max_iters, state.iteration),
            step_time: Duration::ZERO,
            steps: 0,
        }),
        None => None,
    };
    let tokens_per_iter = experiment.tokens_per_iter() as f64;
    let kept = |last: Option<u64>, main: &Option<Main>| match (last, main) {
        (Some(it), Some(m)) => format!(
            "the last good checkpoint (iteration {it}) is kept in {}",
            m.run.checkpoints_dir().join(checkpoint::LATEST).display()
        ),
        // Only the main replica (node 0's first device) writes checkpoints.
        (Some(it), None) => {
            format!("the last good checkpoint (iteration {it}) is kept in node 0's run folder")
        }
        (None, _) => "no checkpoint had been written yet".into(),
    };

    // A run stopped during a validation saved the step's checkpoint without the validation:
    // it runs first now, so val.csv and the best checkpoint miss nothing. Every replica
    // takes part, so they decide together.
    let pending = main
        .as_ref()
        .is_some_and(|m| validation_missing(m, t, state.iteration));
    if replicas::any(peer, pending, "agreeing on a pending validation")? {
        let context = Validation {
            experiment,
            experiment_ron,
            diffusion: &diffusion,
            corpus,
            peer,
        };
        if !validate(&context, &mut state, &mut main)? {
            return stopped_in_validation(state, &diffusion, experiment_ron, main);
        }
    }

    while state.iteration < t.max_iters {
        let batch = |it, micro| {
            corpus.train_batch(experiment.seed, it, micro, peer.rank() as u64, t.batch_size)
        };
        let step_started = Instant::now();
        let report = step(
            &mut state,
            experiment,
            &diffusion,
            corpus.seq_len(),
            batch,
            device,
            peer,
        )
        .map_err(|e| anyhow::anyhow!("{e:#}; {}", kept(last_checkpoint, &main)))?;
        let it = state.iteration;
        if report.abandoned {
            // Ctrl-C between micro-batches: the state is the last completed step's.
            if let Some(m) = main.as_mut() {
                save(&state, &diffusion, experiment_ron, m, false)?;
                m.bar.abandon();
            }
            return Ok(Outcome {
                ending: Ending::Interrupted { iteration: it },
                ema: state.ema.weights,
                iteration: it,
            });
        }

        if let Some(m) = main.as_mut() {
            m.step_time += step_started.elapsed();
            m.steps += 1;
            m.bar.set_position(it);
            if it.is_multiple_of(t.log_interval) {
                let step_s = m.step_time.as_secs_f64() / f64::from(m.steps);
                (m.step_time, m.steps) = (Duration::ZERO, 0);
                let s = &report.stats;
                let row = TrainRow {
                    iter: it,
                    tokens: state.tokens,
                    lr: report.lr,
                    loss: s.loss(),
                    kl: s.kl(),
                    ce: s.ce(),
                    l_t: s.l_t(),
                    bits_per_token: s.bits_per_token(),
                    grad_norm: report.grad_norm,
                    step_ms: step_s * 1e3,
                    tokens_per_s: tokens_per_iter / step_s,
                };
                m.logs.train.append(&row)?;
                let message = format!(
                    "loss {:.4} | {:.3} bits/token | {:.0} tok/s",
                    row.loss, row.bits_per_token, row.tokens_per_s
                );
                if m.bar.is_hidden() {
                    eoutln!(
                        "iter {it}: {message} | lr {:.3e} | grad norm {:.3}",
                        row.lr,
                        row.grad_norm
                    );
                }
                m.bar.set_message(message);
            }
        }

        let periodic = t.checkpoint.every.is_some_and(|e| it.is_multiple_of(e));
        let mut saved = false;
        if is_validation_point(t, it) {
            let context = Validation {
                experiment,
                experiment_ron,
                diffusion: &diffusion,
                corpus,
                peer,
            };
            let validated = validate(&context, &mut state, &mut main)
                .map_err(|e| anyhow::anyhow!("{e:#}; {}", kept(last_checkpoint, &main)))?;
            if !validated {
                return stopped_in_validation(state, &diffusion, experiment_ron, main);
            }
            saved = true;
        } else if periodic || report.stop {
            if let Some(m) = main.as_mut() {
                save(&state, &diffusion, experiment_ron, m, false)?;
            }
            saved = true;
        }
        if saved {
            last_checkpoint = Some(it);
        }
        if report.stop {
            if let Some(m) = &main {
                m.bar.abandon();
            }
            return Ok(Outcome {
                ending: Ending::Interrupted { iteration: it },
                ema: state.ema.weights,
                iteration: it,
            });
        }
    }
    if let Some(m) = &main {
        m.bar.finish_and_clear();
    }
    Ok(Outcome {
        ending: Ending::Completed,
        ema: state.ema.weights,
        iteration: state.iteration,
    })
}

/// Whether iteration `it` (steps done) ends with a validation.
fn is_validation_point(t: &crate::spec::Train, it: u64) -> bool {
    it > 0 && (it.is_multiple_of(t.eval_interval) || it == t.max_iters)
}

/// Whether the run stopped at a validation point before that validation was logged.
fn validation_missing(main: &Main, t: &crate::spec::Train, it: u64) -> bool {
    if !is_validation_point(t, it) {
        return false;
    }
    let rows: Vec<ValRow> = read_rows(&main.run.csv_path::<ValRow>()).unwrap_or_default();
    !rows.iter().any(|row| row.iter == it)
}

/// What the validation of a step reads.
struct Validation<'a, B: AutodiffBackend> {
    experiment: &'a Experiment,
    experiment_ron: &'a str,
    diffusion: &'a Diffusion,
    corpus: &'a Corpus,
    peer: &'a Peer<B::InnerBackend>,
}

/// Validates the EMA weights after `state.iteration` steps; the main replica logs the row
/// and writes the checkpoint (the best one too, when it is). `Ok(false)`: stopped by
/// Ctrl-C between two batches (every replica agrees), nothing logged or saved.
fn validate<B: AutodiffBackend>(
    context: &Validation<B>,
    state: &mut State<B>,
    main: &mut Option<Main>,
) -> Result<bool> {
    let Validation {
        experiment,
        experiment_ron,
        diffusion,
        corpus,
        peer,
    } = *context;
    let t = &experiment.train;
    let it = state.iteration;
    let started = Instant::now();
    let Some((val, bits_se)) = replicas::validate(
        peer,
        &state.ema.weights,
        diffusion,
        corpus,
        t.eval_iters,
        t.batch_size,
        &interrupt::requested,
    )?
    else {
        return Ok(false);
    };
    // A tiny validation may draw t = 0 for every sequence: then there is no KL term
    // and no l_T to judge (NaN, as in the reference), which is not divergence.
    let has_l_t = val.kl_tokens > 0;
    if !val.loss().is_finite() || (has_l_t && !val.l_t().is_finite()) {
        bail!("non-finite validation loss at iteration {it}: the weights diverged");
    }
    let best = has_l_t && state.best_val_l_t.is_none_or(|b| val.l_t() < b);
    if best {
        state.best_val_l_t = Some(val.l_t());
    }
    if let Some(m) = main.as_mut() {
        let row = ValRow {
            iter: it,
            tokens: state.tokens,
            loss: val.loss(),
            kl: val.kl(),
            ce: val.ce(),
            l_t: val.l_t(),
            bits_per_token: val.bits_per_token(),
            bits_se,
            batches: t.eval_iters,
            weights: WeightSet::Ema,
            eval_ms: started.elapsed().as_secs_f64() * 1e3,
        };
        m.logs.val.append(&row)?;
        let message = format!(
            "val @ {it}: loss {:.4} | {} bits/token (EMA)",
            row.loss,
            plus_minus(row.bits_per_token, row.bits_se)
        );
        if m.bar.is_hidden() {
            eoutln!("{message}");
        } else {
            m.bar.println(message);
        }
        let keep_best = best && t.checkpoint.keep_best;
        save(state, diffusion, experiment_ron, m, keep_best)?;
        m.run.redraw_loss_chart()?;
    }
    Ok(true)
}

/// The end of a run stopped during a validation: the step it validated is complete, so
/// its checkpoint loses nothing (the resumed run validates it first).
fn stopped_in_validation<B: AutodiffBackend>(
    state: State<B>,
    diffusion: &Diffusion,
    experiment_ron: &str,
    mut main: Option<Main>,
) -> Result<Outcome<B>> {
    let it = state.iteration;
    if let Some(m) = main.as_mut() {
        save(&state, diffusion, experiment_ron, m, false)?;
        m.bar.abandon();
        eoutln!("validation at iteration {it} interrupted; checkpoint saved");
    }
    Ok(Outcome {
        ending: Ending::Interrupted { iteration: it },
        ema: state.ema.weights,
        iteration: it,
    })
}

/// The run's CSV logs, open for appending.
struct Logs {
    train: CsvLog<TrainRow>,
    val: CsvLog<ValRow>,
}

/// Writes `checkpoints/latest.safetensors` (and `best.safetensors` when `best`), then
/// flushes the logs and records the checkpoint in run.json. Refuses weights that are not
/// all finite, so the checkpoint on disk is always a good one.
fn save<B: AutodiffBackend>(
    state: &State<B>,
    diffusion: &Diffusion,
    experiment_ron: &str,
    main: &mut Main,
    best: bool,
) -> Result<()> {
    let Main { run, logs, .. } = main;
    if !all_finite(&state.model) {
        bail!(
            "non-finite weights after iteration {}: the run diverged; the previous checkpoint is kept",
            state.iteration
        );
    }
    let dir = run.checkpoints_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (optimizer_steps, optimizer) = state.optimizer.state();
    let ckpt = Checkpoint {
        iteration: state.iteration,
        tokens: state.tokens,
        best_val_l_t: state.best_val_l_t,
        ema_updates: state.ema.updates,
        optimizer_steps,
        experiment: experiment_ron.to_string(),
        model: model_state_dict(&state.model, diffusion),
        ema: model_state_dict(&state.ema.weights, diffusion),
        optimizer,
    };
    let latest = dir.join(checkpoint::LATEST);
    ckpt.save(&latest)?;
    if best {
        // A second name for the same file: later saves replace `latest` by rename, which
        // leaves this link pointing at the old contents.
        let best = dir.join(checkpoint::BEST);
        let tmp = crate::results::temp_path(&best);
        let linked =
            std::fs::hard_link(&latest, &tmp).or_else(|_| std::fs::copy(&latest, &tmp).map(drop));
        crate::results::finish_atomic(&tmp, &best, linked)?;
    }
    // The logs on disk must reach the checkpoint, or a crash could lose rows that the
    // resumed run would not write again.
    logs.train.sync()?;
    logs.val.sync()?;
    run.set_checkpoint_iter(state.iteration)
}

/// Whether every parameter is finite (one reduction per parameter, one host read).
fn all_finite<B: Backend, M: Module<B>>(module: &M) -> bool {
    struct Sum<B: Backend>(Option<Tensor<B, 1>>);
    impl<B: Backend> ModuleVisitor<B> for Sum<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            // Any NaN or infinity makes the sum of |w| non-finite.
            let s = param.val().abs().sum();
            self.0 = Some(match self.0.take() {
                Some(t) => t.add(s),
                None => s,
            });
        }
    }
    let mut sum = Sum::<B>(None);
    module.visit(&mut sum);
    sum.0.is_none_or(|t| {
        let v: f64 = t.into_scalar().elem();
        v.is_finite()
    })
}

/// A bar on a terminal; hidden (and replaced by log lines) when stderr is not one.
fn progress_bar(total: u64, position: u64) -> ProgressBar {
    let bar = ProgressBar::new(total).with_position(position);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} iters | {msg} | eta {eta}")
            .expect("a valid template"),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};

    #[test]
    fn loss_on_a_fixed_batch_falls() {
        let experiment = crate::spec::load_str(
            std::path::Path::new("fixed.ron"),
            r#"(
                name: "fixed",
                network: (n_embed: 32, n_heads: 2, n_blocks: 2, n_cond: 16, dropout: 0.0),
                dataset: Synthetic(seq_len: 16),
                sampler: LowDiscrepancy,
                train: (batch_size: 8, grad_accum: 1, max_iters: 300, warmup_iters: 10, lr: 3e-3),
            )"#,
            &[],
        )
        .unwrap()
        .experiment;
        let corpus = crate::data::open(&experiment.dataset).unwrap();
        let config = DitConfig::from_spec(&experiment.network, corpus.vocab().size()).unwrap();
        let diffusion = Diffusion::new(&experiment.model, corpus.vocab().size());
        let device = Default::default();
        let mut state = State::<Autodiff<Flex>>::fresh(&experiment, &config, &device);
        let fixed = corpus.train_batch(experiment.seed, 0, 0, 0, 8);
        let mut losses = vec![];
        for _ in 0..300 {
            let report = step(
                &mut state,
                &experiment,
                &diffusion,
                16,
                |_, _| fixed.clone(),
                &device,
                &Peer::solo(),
            )
            .unwrap();
            losses.push(report.stats.loss());
        }
        // Times still vary per step, so compare means over 50 steps.
        let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
        let (first, last) = (mean(&losses[..50]), mean(&losses[250..]));
        // Without learning the ratio stays near 1 (LDS keeps the 50-step means steady).
        assert!(last < 0.75 * first, "loss {first:.4} -> {last:.4}");
        assert_eq!(state.iteration, 300);
        assert_eq!(state.optimizer.steps(), 300);
    }
}
