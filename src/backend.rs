//! The compute backends ddexp can run on.
//!
//! The flex backend (pure Rust, CPU) is always built and is the default. The `cuda` cargo
//! feature adds burn-cuda, which loads the CUDA driver and NVRTC when it first runs, so a
//! binary built with it still starts on a machine without a GPU.

/// Whether this binary was built with the `cuda` feature.
pub const CUDA_AVAILABLE: bool = cfg!(feature = "cuda");

/// The CPU backend.
pub type Cpu = burn::backend::Flex;

/// The CUDA backend.
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda;

/// CUDA device `index`, checked: a machine without the driver or without that device gives
/// an error that says so instead of a panic deep inside the runtime.
#[cfg(feature = "cuda")]
pub fn cuda_device(index: usize) -> anyhow::Result<burn::backend::cuda::CudaDevice> {
    use burn::tensor::Tensor;
    let device = burn::backend::cuda::CudaDevice::new(index);
    let probe = std::panic::catch_unwind(|| {
        let t = Tensor::<Cuda, 1>::from_floats([1.0, 2.0], &device);
        t.sum().into_scalar()
    });
    match probe {
        Ok(_) => Ok(device),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            anyhow::bail!(
                "cannot use CUDA device {index}: {message}\n(is the NVIDIA driver installed and does this machine have a GPU with that index? `nvidia-smi` lists them)"
            )
        }
    }
}

/// Bytes the CUDA allocator holds on device `index` right now (what the process costs the
/// GPU, padding and pooled blocks included).
#[cfg(feature = "cuda")]
pub fn cuda_reserved_bytes(index: usize) -> Option<u64> {
    use burn::cubecl::Runtime;
    let device = burn::backend::cuda::CudaDevice::new(index);
    burn::cubecl::cuda::CudaRuntime::client(&device)
        .memory_usage()
        .ok()
        .map(|usage| usage.bytes_reserved)
}

/// Work that runs on one device of whichever backend an experiment names (evaluation and
/// sampling; training picks its own autodiff backend).
pub trait Job {
    type Output;
    fn run<B: burn::tensor::backend::Backend>(
        self,
        device: &B::Device,
    ) -> anyhow::Result<Self::Output>;
}

/// Where `ddexp eval` and `ddexp sample` run when not where the experiment trained (a model
/// trained on GPUs, evaluated on a laptop; another GPU than the first).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceChoice {
    /// Replaces the experiment's backend.
    pub backend: Option<crate::spec::Backend>,
    /// The device index on that backend (CUDA only: the CPU backend is one device).
    pub device: Option<usize>,
}

impl DeviceChoice {
    /// The one-device topology to run on: the experiment's `trained` topology with the choice
    /// applied. A backend other than the trained one starts at its device 0.
    pub fn topology(
        &self,
        trained: &crate::spec::Topology,
    ) -> anyhow::Result<crate::spec::Topology> {
        let backend = self.backend.unwrap_or(trained.backend);
        let devices = match (backend, self.device) {
            (crate::spec::Backend::Cpu, Some(index)) if index != 0 => anyhow::bail!(
                "--device {index}: the CPU backend is a single device (0); device indices \
                 pick a GPU with --backend cuda"
            ),
            (_, Some(index)) => vec![index],
            _ if backend != trained.backend => vec![0],
            _ => trained.devices.clone(),
        };
        Ok(crate::spec::Topology {
            backend,
            devices,
            nodes: 1,
            orchestrator: None,
        })
    }
}

/// Runs `job` on the first device of `topology`: flex on the CPU, or CUDA device
/// `topology.devices[0]` (a binary built without the `cuda` feature says how to rebuild).
pub fn run_on_one_device<J: Job>(
    topology: &crate::spec::Topology,
    job: J,
) -> anyhow::Result<J::Output> {
    match topology.backend {
        crate::spec::Backend::Cpu => job.run::<Cpu>(&burn::backend::flex::FlexDevice),
        crate::spec::Backend::Cuda => run_on_cuda(topology, job),
    }
}

#[cfg(feature = "cuda")]
fn run_on_cuda<J: Job>(topology: &crate::spec::Topology, job: J) -> anyhow::Result<J::Output> {
    let device = cuda_device(topology.devices.first().copied().unwrap_or(0))?;
    job.run::<Cuda>(&device)
}

#[cfg(not(feature = "cuda"))]
fn run_on_cuda<J: Job>(_: &crate::spec::Topology, _: J) -> anyhow::Result<J::Output> {
    anyhow::bail!(
        "the model was trained on CUDA, but this ddexp was built without CUDA; rebuild with \
         `cargo build --release --features cuda`, or run it on the CPU with --backend cpu"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Backend, Topology};

    fn gpus(devices: Vec<usize>) -> Topology {
        Topology {
            backend: Backend::Cuda,
            devices,
            nodes: 4,
            orchestrator: Some("10.0.0.1:29500".into()),
        }
    }

    #[test]
    fn no_choice_keeps_the_trained_backend_on_one_node() {
        let t = DeviceChoice::default().topology(&gpus(vec![2, 3])).unwrap();
        assert_eq!(t.backend, Backend::Cuda);
        assert_eq!(t.devices, vec![2, 3]);
        assert_eq!((t.nodes, t.orchestrator), (1, None));
    }

    #[test]
    fn another_backend_starts_at_device_zero_unless_told() {
        let cpu = DeviceChoice {
            backend: Some(Backend::Cpu),
            device: None,
        };
        assert_eq!(cpu.topology(&gpus(vec![5])).unwrap().devices, vec![0]);
        let gpu3 = DeviceChoice {
            backend: Some(Backend::Cuda),
            device: Some(3),
        };
        let t = gpu3.topology(&Topology::default()).unwrap();
        assert_eq!((t.backend, t.devices), (Backend::Cuda, vec![3]));
    }

    #[test]
    fn the_cpu_has_only_device_zero() {
        let choice = DeviceChoice {
            backend: Some(Backend::Cpu),
            device: Some(1),
        };
        let e = choice.topology(&gpus(vec![0])).unwrap_err().to_string();
        assert!(
            e.contains("--device 1") && e.contains("--backend cuda"),
            "{e}"
        );
    }
}
