//! The reference recipe's optimiser: AdamW (PyTorch semantics, decoupled weight decay) with
//! weight decay only on parameters of 2 or more dimensions, the learning-rate schedule, and
//! clipping by the global gradient norm.
//!
//! Burn's own AdamW decays every parameter and keys its state by random parameter ids;
//! this one follows nanoDD's two parameter groups and keys its moments by the parameter's
//! module path (`blocks.0.attn_qkv.weight`), so the state can be saved to a readable
//! safetensors file and loaded into a fresh process.

use std::collections::BTreeMap;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};

use crate::spec::Train;

/// Learning rate at iteration `it` (0-based): linear warm-up from 0 over `warmup_iters`,
/// then cosine decay from `lr` to `min_lr` at `max_iters` (nanoGPT's `get_lr`).
pub fn learning_rate(train: &Train, it: u64) -> f64 {
    if it < train.warmup_iters {
        return train.lr * it as f64 / train.warmup_iters as f64;
    }
    if it > train.max_iters {
        return train.min_lr;
    }
    let ratio = (it - train.warmup_iters) as f64 / (train.max_iters - train.warmup_iters) as f64;
    let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
    train.min_lr + coeff * (train.lr - train.min_lr)
}

/// PyTorch's AdamW default epsilon.
const EPS: f64 = 1e-8;

/// AdamW state: the step count and the two moments of every parameter, by module path.
pub struct AdamW<B: Backend> {
    beta1: f64,
    beta2: f64,
    weight_decay: f64,
    step: u64,
    moments: BTreeMap<String, Moments<B>>,
}

/// First and second moments of one parameter, flattened.
struct Moments<B: Backend> {
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
}

impl<B: Backend> AdamW<B> {
    pub fn new(train: &Train) -> Self {
        AdamW {
            beta1: train.betas.0,
            beta2: train.betas.1,
            weight_decay: train.weight_decay,
            step: 0,
            moments: BTreeMap::new(),
        }
    }

    /// Optimiser steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Applies one update with learning rate `lr`, consuming the gradients.
    pub fn step<AB, M>(&mut self, module: M, grads: &mut GradientsParams, lr: f64) -> M
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        self.step += 1;
        let mut mapper = AdamWMapper {
            optim: self,
            grads,
            lr,
            path: vec![],
        };
        module.map(&mut mapper)
    }

    /// The first and second moments of the parameter at module path `path`, if it has had a
    /// gradient.
    pub fn moments_of(&self, path: &str) -> Option<(Tensor<B, 1>, Tensor<B, 1>)> {
        self.moments
            .get(path)
            .map(|mo| (mo.m.clone(), mo.v.clone()))
    }

    /// Replaces the whole state: `step` updates taken, and (path, m, v) for every parameter
    /// that has had a gradient. For replicas that adopt another replica's state.
    pub fn restore(&mut self, step: u64, moments: Vec<(String, Tensor<B, 1>, Tensor<B, 1>)>) {
        self.step = step;
        self.moments = moments
            .into_iter()
            .map(|(path, m, v)| (path, Moments { m, v }))
            .collect();
    }

    /// The state as named host tensors (`m.<path>`, `v.<path>`), for checkpoints.
    pub fn state(&self) -> (u64, Vec<(String, TensorData)>) {
        let mut tensors = vec![];
        for (path, mo) in &self.moments {
            tensors.push((format!("m.{path}"), mo.m.to_data()));
            tensors.push((format!("v.{path}"), mo.v.to_data()));
        }
        (self.step, tensors)
    }

    /// Restores a state saved by [`AdamW::state`].
    pub fn load_state(
        &mut self,
        step: u64,
        tensors: Vec<(String, TensorData)>,
        device: &B::Device,
    ) -> anyhow::Result<()> {
        let mut m = BTreeMap::new();
        let mut v = BTreeMap::new();
        for (name, data) in tensors {
            let tensor = Tensor::<B, 1>::from_data(data, device);
            match name.split_once('.') {
                Some(("m", path)) => m.insert(path.to_string(), tensor),
                Some(("v", path)) => v.insert(path.to_string(), tensor),
                _ => anyhow::bail!("unexpected optimiser tensor `{name}`"),
            };
        }
        let mut moments = BTreeMap::new();
        for (path, m) in m {
            let v = v.remove(&path).ok_or_else(|| {
                anyhow::anyhow!("optimiser state has `m.{path}` but no `v.{path}`")
            })?;
            moments.insert(path, Moments { m, v });
        }
        if let Some(path) = v.keys().next() {
            anyhow::bail!("optimiser state has `v.{path}` but no `m.{path}`");
        }
        self.step = step;
        self.moments = moments;
        Ok(())
    }
}

struct AdamWMapper<'a, B: Backend> {
    optim: &'a mut AdamW<B>,
    grads: &'a mut GradientsParams,
    lr: f64,
    path: Vec<String>,
}

impl<AB: AutodiffBackend> ModuleMapper<AB> for AdamWMapper<'_, AB::InnerBackend> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<AB, D>>) -> Param<Tensor<AB, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<AB::InnerBackend, D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let o = &mut *self.optim;
        let shape = grad.shape();
        let n = shape.num_elements();
        let g = grad.reshape([n]);
        let path = self.path.join(".");
        let (m, v) = match o.moments.remove(&path) {
            Some(Moments { m, v }) => (m, v),
            None => (g.zeros_like(), g.zeros_like()),
        };
        let m = m
            .mul_scalar(o.beta1)
            .add(g.clone().mul_scalar(1.0 - o.beta1));
        let v = v
            .mul_scalar(o.beta2)
            .add(g.square().mul_scalar(1.0 - o.beta2));
        let t = o.step as i32;
        let bias1 = 1.0 - o.beta1.powi(t);
        let bias2 = 1.0 - o.beta2.powi(t);
        let denom = v.clone().div_scalar(bias2).sqrt().add_scalar(EPS);
        let update = m.clone().div_scalar(bias1).div(denom).reshape(shape);
        o.moments.insert(path, Moments { m, v });

        // nanoDD's groups: decay matrices and embeddings, not biases and norm weights.
        let decay = if D >= 2 { o.weight_decay } else { 0.0 };
        let w = tensor.inner();
        let w = if decay > 0.0 {
            w.mul_scalar(1.0 - self.lr * decay)
        } else {
            w
        };
        let w = w.sub(update.mul_scalar(self.lr));
        Param::from_mapped_value(id, Tensor::from_inner(w).require_grad(), mapper)
    }
}

/// Global L2 norm of all gradients; if `max_norm > 0` and the norm exceeds it, scales every
/// gradient by `max_norm / (norm + 1e-6)` as `torch.nn.utils.clip_grad_norm_` does.
/// Returns the norm before clipping.
pub fn clip_grad_norm<AB, M>(module: &M, grads: &mut GradientsParams, max_norm: f64) -> f64
where
    AB: AutodiffBackend,
    M: AutodiffModule<AB>,
{
    let mut sum = SquaredNorm::<AB::InnerBackend> { grads, total: None };
    module.visit(&mut sum);
    let norm = sum
        .total
        .map_or(0.0, |t| t.into_scalar().elem::<f64>().sqrt());
    if max_norm > 0.0 && norm > max_norm {
        let mut scale = Scale::<AB::InnerBackend> {
            grads,
            factor: max_norm / (norm + 1e-6),
            phantom: std::marker::PhantomData,
        };
        module.visit(&mut scale);
    }
    norm
}

struct SquaredNorm<'a, B: Backend> {
    grads: &'a GradientsParams,
    total: Option<Tensor<B, 1>>,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for SquaredNorm<'_, AB::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        if let Some(g) = self.grads.get::<AB::InnerBackend, D>(param.id) {
            // Summed on the device; the host reads one number at the end.
            let s = g.square().sum();
            self.total = Some(match self.total.take() {
                Some(t) => t.add(s),
                None => s,
            });
        }
    }
}

struct Scale<'a, B: Backend> {
    grads: &'a mut GradientsParams,
    factor: f64,
    phantom: std::marker::PhantomData<B>,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for Scale<'_, AB::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        if let Some(g) = self.grads.remove::<AB::InnerBackend, D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.factor));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::nn::{Linear, LinearConfig};

    type B = Autodiff<Flex>;

    fn train(lr: f64, min_lr: f64, warmup: u64, max: u64) -> Train {
        Train {
            lr,
            min_lr,
            warmup_iters: warmup,
            max_iters: max,
            ..Train::default()
        }
    }

    #[test]
    fn schedule_warms_up_then_decays_by_cosine() {
        let t = train(1e-3, 1e-5, 100, 1100);
        assert_eq!(learning_rate(&t, 0), 0.0);
        assert!((learning_rate(&t, 50) - 5e-4).abs() < 1e-15);
        assert!((learning_rate(&t, 100) - 1e-3).abs() < 1e-15);
        // Half-way through the decay the cosine factor is 0.5.
        assert!((learning_rate(&t, 600) - (1e-5 + 0.5 * (1e-3 - 1e-5))).abs() < 1e-15);
        // A quarter of the way: (1 + cos(pi/4)) / 2.
        let q = (1.0 + (std::f64::consts::PI / 4.0).cos()) / 2.0;
        assert!((learning_rate(&t, 350) - (1e-5 + q * (1e-3 - 1e-5))).abs() < 1e-15);
        assert!((learning_rate(&t, 1100) - 1e-5).abs() < 1e-15);
        assert_eq!(learning_rate(&t, 5000), 1e-5);
    }

    /// A module with a 2-D weight and a 1-D bias, both set to known values.
    fn linear(device: &burn::tensor::Device<B>) -> Linear<B> {
        let l = LinearConfig::new(2, 1).init::<B>(device);
        let weight = Tensor::<B, 2>::from_floats([[1.0], [2.0]], device);
        let bias = Tensor::<B, 1>::from_floats([3.0], device);
        Linear {
            weight: Param::initialized(l.weight.id, weight.require_grad()),
            bias: Some(Param::initialized(l.bias.unwrap().id, bias.require_grad())),
        }
    }

    fn grads_of(l: &Linear<B>, device: &burn::tensor::Device<B>) -> GradientsParams {
        // loss = sum(x W + b) with x = [1, -1]: dW = [[1], [-1]], db = [1].
        let x = Tensor::<B, 2>::from_floats([[1.0, -1.0]], device);
        let loss = l.forward(x).sum();
        GradientsParams::from_grads(loss.backward(), l)
    }

    #[test]
    fn adamw_decays_only_matrices() {
        let device = Default::default();
        let l = linear(&device);
        let mut grads = grads_of(&l, &device);
        let t = Train {
            weight_decay: 0.1,
            betas: (0.9, 0.98),
            ..Train::default()
        };
        let mut opt = AdamW::<Flex>::new(&t);
        let lr = 0.01;
        let l = opt.step(l, &mut grads, lr);
        // First step: m̂ = g, v̂ = g², update = g / (|g| + eps) = sign(g).
        let step = |g: f64| g / (g.abs() + EPS);
        let w: Vec<f32> = l.weight.val().into_data().to_vec().unwrap();
        let b: Vec<f32> = l.bias.as_ref().unwrap().val().into_data().to_vec().unwrap();
        let expect_w = [
            1.0 * (1.0 - lr * 0.1) - lr * step(1.0),
            2.0 * (1.0 - lr * 0.1) - lr * step(-1.0),
        ];
        assert!(
            (w[0] as f64 - expect_w[0]).abs() < 1e-6,
            "{w:?} vs {expect_w:?}"
        );
        assert!(
            (w[1] as f64 - expect_w[1]).abs() < 1e-6,
            "{w:?} vs {expect_w:?}"
        );
        // The bias is 1-D: no decay.
        assert!((b[0] as f64 - (3.0 - lr * step(1.0))).abs() < 1e-6, "{b:?}");

        // Second step with the same gradient: moments carry over with bias correction.
        let mut grads = grads_of(&l, &device);
        let l = opt.step(l, &mut grads, lr);
        let m = 0.9 * 0.1 + 0.1; // m after two steps of g = 1
        let v = 0.98 * 0.02 + 0.02;
        let upd = (m / (1.0 - 0.9f64.powi(2))) / ((v / (1.0 - 0.98f64.powi(2))).sqrt() + EPS);
        let b2: Vec<f32> = l.bias.as_ref().unwrap().val().into_data().to_vec().unwrap();
        assert!(
            (b2[0] as f64 - (b[0] as f64 - lr * upd)).abs() < 1e-6,
            "{b2:?}"
        );
        assert_eq!(opt.steps(), 2);
    }

    #[test]
    fn optimizer_state_round_trips() {
        let device = Default::default();
        let l = linear(&device);
        let mut opt = AdamW::<Flex>::new(&Train::default());
        let mut grads = grads_of(&l, &device);
        let l = opt.step(l, &mut grads, 0.01);
        let (step, tensors) = opt.state();
        let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["m.bias", "v.bias", "m.weight", "v.weight"]);

        let mut restored = AdamW::<Flex>::new(&Train::default());
        restored.load_state(step, tensors, &device).unwrap();
        let a = opt.step(l.clone(), &mut grads_of(&l, &device), 0.01);
        let b = restored.step(l.clone(), &mut grads_of(&l, &device), 0.01);
        assert_eq!(a.weight.val().into_data(), b.weight.val().into_data());
    }

    #[test]
    fn clipping_uses_the_global_norm() {
        let device = Default::default();
        let l = linear(&device);
        // Gradients (1, -1) and (1): global norm sqrt(3).
        let mut grads = grads_of(&l, &device);
        let norm = clip_grad_norm(&l, &mut grads, 0.5);
        assert!((norm - 3f64.sqrt()).abs() < 1e-6);
        let factor = 0.5 / (3f64.sqrt() + 1e-6);
        let gw: Vec<f32> = grads
            .get::<Flex, 2>(l.weight.id)
            .unwrap()
            .into_data()
            .to_vec()
            .unwrap();
        let gb: Vec<f32> = grads
            .get::<Flex, 1>(l.bias.as_ref().unwrap().id)
            .unwrap()
            .into_data()
            .to_vec()
            .unwrap();
        assert!((gw[0] as f64 - factor).abs() < 1e-6 && (gw[1] as f64 + factor).abs() < 1e-6);
        assert!((gb[0] as f64 - factor).abs() < 1e-6);

        // Below the threshold nothing changes; 0 disables clipping.
        for max in [10.0, 0.0] {
            let mut grads = grads_of(&l, &device);
            clip_grad_norm(&l, &mut grads, max);
            let gw: Vec<f32> = grads
                .get::<Flex, 2>(l.weight.id)
                .unwrap()
                .into_data()
                .to_vec()
                .unwrap();
            assert_eq!(gw, [1.0, -1.0]);
        }
    }
}
