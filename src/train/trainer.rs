//! The training loop, generic over the backend: micro-batches with gradient accumulation,
//! clipping, AdamW, EMA, logging, validation, checkpoints, and clean stops.
//!
//! One iteration (optimiser step `it`, counted from 0):
//!   for each micro-step: draw the windows, times and noise of (seed, it, micro), seed
//!   dropout, compute the loss, backpropagate loss / grad_accum, accumulate the gradients;
//!   clip by the global norm; stop if the loss or the norm is not finite; AdamW step at
//!   lr(it); fold the weights into the EMA. After the step: log, validate, checkpoint.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};

use super::checkpoint::{self, Checkpoint};
use super::ema::Ema;
use super::interrupt;
use super::optimizer::{AdamW, clip_grad_norm, learning_rate};
use crate::data::Corpus;
use crate::diffusion::{Diffusion, LossStats, local_times, sample_times};
use crate::eval::validation_loss;
use crate::model::{Dit, DitConfig, StateDict, model_state_dict, seed_dropout};
use crate::results::{CsvLog, RunDir, TrainRow, ValRow, Weights};
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
pub struct Trained<B: AutodiffBackend> {
    pub ending: Ending,
    pub ema: Dit<B::InnerBackend>,
    pub iteration: u64,
}

/// Trains `experiment` on `device`, writing logs and checkpoints into `run`.
pub fn train<B: AutodiffBackend>(
    experiment: &Experiment,
    experiment_ron: &str,
    corpus: &Corpus,
    run: &mut RunDir,
    start: Start,
    device: &B::Device,
) -> Result<Trained<B>> {
    let vocab = corpus.vocab().size();
    let config = DitConfig::from_spec(&experiment.network, vocab)?;
    let diffusion = Diffusion::new(&experiment.model, vocab);
    let timesteps = diffusion.timesteps();
    let t = &experiment.train;

    let mut state = match start {
        Start::Fresh => {
            let model: Dit<B> = config.init(experiment.seed, device);
            let ema = Ema::new(model.valid(), &t.ema);
            State {
                model,
                ema,
                optimizer: AdamW::new(t),
                iteration: 0,
                tokens: 0,
                best_val_l_t: None,
            }
        }
        Start::Resume(ckpt) => State::from_checkpoint(&config, experiment, *ckpt, device)?,
    };

    let tokens_per_iter = experiment.tokens_per_iter() as u64;
    let global_batch = experiment.global_batch();
    let mut train_log = run.log::<TrainRow>()?;
    let mut val_log = run.log::<ValRow>()?;
    let bar = progress_bar(t.max_iters, state.iteration);
    let mut last_log = Instant::now();
    let mut last_good_checkpoint = state.iteration;

    while state.iteration < t.max_iters {
        if interrupt::requested() {
            save(
                &state,
                &diffusion,
                experiment_ron,
                run,
                (&train_log, &val_log),
                false,
            )?;
            bar.abandon();
            return Ok(Trained {
                ending: Ending::Interrupted {
                    iteration: state.iteration,
                },
                ema: state.ema.weights,
                iteration: state.iteration,
            });
        }
        let it = state.iteration;
        let lr = learning_rate(t, it);
        let times = sample_times(
            experiment.sampler,
            experiment.seed,
            it,
            global_batch,
            timesteps,
        );

        let mut accumulator = GradientsAccumulator::<Dit<B>>::new();
        let mut stats = LossStats::default();
        for micro in 0..t.grad_accum {
            let local = local_times(&times, micro, 0, 1, t.batch_size);
            let ids = corpus.train_batch(experiment.seed, it, micro as u64, 0, t.batch_size);
            let x0 = ids_tensor::<B>(&ids, t.batch_size, corpus.seq_len(), device);
            seed_dropout::<B>(device, experiment.seed, it, micro as u64, 0);
            let mut noise = rng::rows(
                experiment.seed,
                Stream::Noise,
                &[it, micro as u64],
                0..t.batch_size as u64,
            );
            let out = diffusion.loss(&state.model, x0, local, &mut noise);
            stats.merge(&out.stats());
            let grads = out.loss.div_scalar(t.grad_accum as f64).backward();
            accumulator.accumulate(
                &state.model,
                GradientsParams::from_grads(grads, &state.model),
            );
        }
        let mut grads = accumulator.grads();
        let grad_norm = clip_grad_norm(&state.model, &mut grads, t.grad_clip);
        if !stats.loss().is_finite() || !grad_norm.is_finite() {
            bail!(
                "non-finite {} at iteration {it} (loss {}, gradient norm {grad_norm}); the weights were not \
                 updated and the last good checkpoint (iteration {last_good_checkpoint}) is kept in {}",
                if stats.loss().is_finite() {
                    "gradient norm"
                } else {
                    "loss"
                },
                stats.loss(),
                run.checkpoints_dir().join(checkpoint::LATEST).display()
            );
        }
        state.model = state.optimizer.step(state.model, &mut grads, lr);
        state.ema.update(state.model.valid());
        state.iteration += 1;
        state.tokens += tokens_per_iter;
        let it = state.iteration;
        bar.set_position(it);

        if it % t.log_interval == 0 {
            let elapsed = last_log.elapsed().as_secs_f64();
            last_log = Instant::now();
            let step_s = elapsed / t.log_interval as f64;
            let row = TrainRow {
                iter: it,
                tokens: state.tokens,
                lr,
                loss: stats.loss(),
                kl: stats.kl(),
                ce: stats.ce(),
                l_t: stats.l_t(),
                bits_per_token: stats.bits_per_token(),
                grad_norm,
                step_ms: step_s * 1e3,
                tokens_per_s: tokens_per_iter as f64 / step_s,
            };
            train_log.append(&row)?;
            let message = format!(
                "loss {:.4} | {:.3} bits/token | {:.0} tok/s",
                row.loss, row.bits_per_token, row.tokens_per_s
            );
            if bar.is_hidden() {
                eprintln!("iter {it}: {message} | lr {lr:.3e} | grad norm {grad_norm:.3}");
            }
            bar.set_message(message);
        }

        let every = t.checkpoint.every.is_some_and(|e| it % e == 0);
        if it % t.eval_interval == 0 || it == t.max_iters {
            let started = Instant::now();
            let (val, bits_se) = validation_loss(
                &state.ema.weights,
                &diffusion,
                corpus,
                t.eval_iters,
                t.batch_size,
            );
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
                weights: Weights::Ema,
                eval_ms: started.elapsed().as_secs_f64() * 1e3,
            };
            val_log.append(&row)?;
            let message = format!(
                "val @ {it}: loss {:.4} | {:.4} ± {:.4} bits/token (EMA)",
                row.loss, row.bits_per_token, row.bits_se
            );
            if bar.is_hidden() {
                eprintln!("{message}");
            } else {
                bar.println(message);
            }
            let best = state.best_val_l_t.is_none_or(|b| row.l_t < b);
            if best {
                state.best_val_l_t = Some(row.l_t);
            }
            save(
                &state,
                &diffusion,
                experiment_ron,
                run,
                (&train_log, &val_log),
                best && t.checkpoint.keep_best,
            )?;
            last_good_checkpoint = it;
            run.redraw_loss_chart()?;
        } else if every {
            save(
                &state,
                &diffusion,
                experiment_ron,
                run,
                (&train_log, &val_log),
                false,
            )?;
            last_good_checkpoint = it;
        }
    }
    bar.finish_and_clear();
    Ok(Trained {
        ending: Ending::Completed,
        ema: state.ema.weights,
        iteration: state.iteration,
    })
}

/// Everything that changes during training (and is saved at a checkpoint).
struct State<B: AutodiffBackend> {
    model: Dit<B>,
    ema: Ema<B::InnerBackend, Dit<B::InnerBackend>>,
    optimizer: AdamW<B::InnerBackend>,
    iteration: u64,
    tokens: u64,
    best_val_l_t: Option<f64>,
}

impl<B: AutodiffBackend> State<B> {
    fn from_checkpoint(
        config: &DitConfig,
        experiment: &Experiment,
        ckpt: Checkpoint,
        device: &B::Device,
    ) -> Result<Self> {
        let net = |weights: &StateDict, which: &str| {
            let net_weights = weights.strip_prefix(crate::model::NET_PREFIX);
            Dit::<B>::from_state_dict(config, &net_weights, device).with_context(|| {
                format!("the checkpoint's {which} weights do not fit the experiment")
            })
        };
        let model = net(&ckpt.model, "model")?;
        let ema_weights = net(&ckpt.ema, "EMA")?.valid();
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

/// Writes `checkpoints/latest.safetensors` (and `best.safetensors` when `best`), then
/// flushes the logs and records the checkpoint in run.json.
fn save<B: AutodiffBackend>(
    state: &State<B>,
    diffusion: &Diffusion,
    experiment_ron: &str,
    run: &mut RunDir,
    logs: (&CsvLog<TrainRow>, &CsvLog<ValRow>),
    best: bool,
) -> Result<()> {
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
    ckpt.save(&dir.join(checkpoint::LATEST))?;
    if best {
        ckpt.save(&dir.join(checkpoint::BEST))?;
    }
    // The logs on disk must reach at least the checkpoint, or a crash could lose rows that
    // a resume would not write again.
    logs.0.sync()?;
    logs.1.sync()?;
    run.set_checkpoint_iter(state.iteration)
}

fn ids_tensor<B: AutodiffBackend>(
    ids: &[u32],
    batch: usize,
    seq_len: usize,
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    Tensor::from_data(TensorData::new(ids, [batch, seq_len]), device)
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
