//! Exponential moving average of the weights, as nanoDD's `ema_pytorch.EMA(beta,
//! update_after_step, power = 1)`: a plain copy for the first `update_after_step` updates,
//! then update n (counted from 0) blends with decay min(beta, (n − k) / (n − k + 1)), which
//! is a running mean of the weights since step k until the cap takes over.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::spec;

/// Decay used by update `n` (0-based); `None` means "copy the weights".
pub fn decay(ema: &spec::Ema, n: u64) -> Option<f64> {
    let k = ema.update_after_step;
    if n < k {
        return None;
    }
    let ramp = (n - k) as f64 / (n - k + 1) as f64;
    Some(ramp.min(ema.beta))
}

/// The averaged weights and how many updates they have seen.
#[derive(Clone)]
pub struct Ema<B: Backend, M: Module<B>> {
    pub weights: M,
    pub updates: u64,
    config: spec::Ema,
    phantom: std::marker::PhantomData<B>,
}

impl<B: Backend, M: Module<B>> Ema<B, M> {
    /// Starts from a copy of `weights` (no updates yet).
    pub fn new(weights: M, config: &spec::Ema) -> Self {
        Self::resume(weights, 0, config)
    }

    /// Continues from saved weights after `updates` updates.
    pub fn resume(weights: M, updates: u64, config: &spec::Ema) -> Self {
        Ema {
            weights,
            updates,
            config: config.clone(),
            phantom: std::marker::PhantomData,
        }
    }

    /// Folds in the current weights (which must be the same module, e.g. `model.valid()`).
    pub fn update(&mut self, current: M) {
        let n = self.updates;
        self.updates += 1;
        let Some(d) = decay(&self.config, n) else {
            self.weights = current;
            return;
        };
        let mut collect = Collect::<B>(Vec::new());
        current.visit(&mut collect);
        let mut blend = Blend {
            current: collect.0.into_iter(),
            decay: d,
        };
        self.weights = self.weights.clone().map(&mut blend);
        assert!(
            blend.current.next().is_none(),
            "the EMA has fewer parameters than the model"
        );
    }
}

/// Parameter values in visiting order, type-erased to 1-D so one list holds every rank.
///
/// Parameters are paired by position, not by `ParamId`: a network rebuilt from a checkpoint
/// gets new ids, and pairing by id would silently stop the average after a resume.
struct Collect<B: Backend>(Vec<Tensor<B, 1>>);

impl<B: Backend> ModuleVisitor<B> for Collect<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val();
        let n = t.shape().num_elements();
        self.0.push(t.reshape([n]));
    }
}

struct Blend<B: Backend> {
    current: std::vec::IntoIter<Tensor<B, 1>>,
    decay: f64,
}

impl<B: Backend> ModuleMapper<B> for Blend<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, ema, mapper) = param.consume();
        let w = self
            .current
            .next()
            .expect("the EMA has more parameters than the model");
        let shape = ema.shape();
        assert_eq!(
            w.shape().num_elements(),
            shape.num_elements(),
            "the EMA and the model differ in structure"
        );
        let value = ema
            .mul_scalar(self.decay)
            .add(w.reshape(shape).mul_scalar(1.0 - self.decay));
        Param::from_mapped_value(id, value, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::nn::{Linear, LinearConfig};

    #[test]
    fn decay_sequence_follows_the_reference() {
        let cfg = spec::Ema {
            beta: 0.9999,
            update_after_step: 100,
        };
        for n in 0..100 {
            assert_eq!(decay(&cfg, n), None, "update {n} copies");
        }
        assert_eq!(decay(&cfg, 100), Some(0.0));
        assert_eq!(decay(&cfg, 101), Some(0.5));
        assert_eq!(decay(&cfg, 102), Some(2.0 / 3.0));
        assert_eq!(decay(&cfg, 199), Some(99.0 / 100.0));
        // (n − 100)/(n − 99) reaches 0.9999 at n = 10099 and stays capped.
        assert_eq!(decay(&cfg, 10_099), Some(0.9999));
        assert_eq!(decay(&cfg, 1_000_000), Some(0.9999));
        assert!(decay(&cfg, 10_098).unwrap() < 0.9999);
    }

    fn weights(l: &Linear<Flex>) -> Vec<f32> {
        l.weight.val().into_data().to_vec().unwrap()
    }

    fn with_weight(l: &Linear<Flex>, v: f32) -> Linear<Flex> {
        let mut l = l.clone();
        let shape = l.weight.val().shape();
        l.weight = Param::initialized(l.weight.id, Tensor::full(shape, v, &Default::default()));
        l
    }

    #[test]
    fn ema_copies_then_averages() {
        let device = Default::default();
        let base = LinearConfig::new(2, 2).init::<Flex>(&device);
        let cfg = spec::Ema {
            beta: 0.9,
            update_after_step: 2,
        };
        let mut ema = Ema::new(with_weight(&base, 0.0), &cfg);
        ema.update(with_weight(&base, 1.0)); // n = 0: copy
        ema.update(with_weight(&base, 2.0)); // n = 1: copy
        assert_eq!(weights(&ema.weights), [2.0; 4]);
        ema.update(with_weight(&base, 4.0)); // n = 2: decay 0 -> copy of 4
        assert_eq!(weights(&ema.weights), [4.0; 4]);
        ema.update(with_weight(&base, 6.0)); // n = 3: decay 1/2 -> 5
        assert_eq!(weights(&ema.weights), [5.0; 4]);
        ema.update(with_weight(&base, 8.0)); // n = 4: decay 2/3 -> 6
        let w = weights(&ema.weights);
        assert!(w.iter().all(|x| (x - 6.0).abs() < 1e-6), "{w:?}");
        assert_eq!(ema.updates, 5);
    }

    #[test]
    fn a_resumed_ema_averages_a_network_with_other_parameter_ids() {
        // After a resume the EMA and the model are rebuilt from a checkpoint separately, so
        // their parameters no longer share ids; the average must go on regardless.
        let device = Default::default();
        let saved = LinearConfig::new(2, 2).init::<Flex>(&device);
        let model = LinearConfig::new(2, 2).init::<Flex>(&device);
        assert_ne!(saved.weight.id, model.weight.id);
        let cfg = spec::Ema {
            beta: 0.9,
            update_after_step: 2,
        };
        let mut ema = Ema::resume(with_weight(&saved, 2.0), 3, &cfg);
        ema.update(with_weight(&model, 8.0)); // n = 3: decay 1/2 -> 5
        assert_eq!(weights(&ema.weights), [5.0; 4]);
    }
}
