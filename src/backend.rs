//! The compute backends, and the one place that turns an experiment's `topology.backend` and
//! device indices into a concrete Burn backend type and its devices.
//!
//! Everything that computes — training, `ddexp bench`, evaluation, sampling — describes its
//! work as a [`Job`], generic over the Burn backend, and hands it to [`run`]; sweeps ask a
//! [`Backend`] how its devices are shared. Nothing else names a Burn backend type.
//!
//! The flex backend (pure Rust, CPU) is always built and is the default. The others are
//! cargo features; asking for one that this binary lacks is an error that says how to
//! rebuild ([`Backend::require_built`]), and `ddexp validate` warns about it.
//!
//! Adding a backend takes four edits, three of them here: a variant of [`Backend`] (its name
//! in experiment files), its entry in `Backend::facts` (command-line name, cargo feature,
//! hardware), one arm in [`run`] that names the Burn type and opens its devices, and the
//! cargo feature in Cargo.toml.

use anyhow::{Result, bail};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which backend runs an experiment (`topology.backend`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Backend {
    /// The flex backend: pure Rust on the CPU, always available.
    #[default]
    Cpu,
    /// burn-cuda on NVIDIA GPUs; needs a binary built with `--features cuda`.
    Cuda,
    /// LibTorch (PyTorch's C++ library, through burn-tch) on the CPU; needs a binary built
    /// with `--features tch`.
    LibTorch,
    /// LibTorch on NVIDIA GPUs; needs a binary built with `--features tch` against a LibTorch
    /// with CUDA.
    LibTorchCuda,
    /// burn-wgpu on any GPU with Vulkan, Metal or DirectX 12 (AMD, Intel, Apple, NVIDIA), and
    /// on the CPU through a software Vulkan driver such as Mesa's lavapipe; needs a binary
    /// built with `--features wgpu`.
    Wgpu,
}

/// What kind of hardware a backend's device indices name, which decides how a sweep shares
/// the machine between members running at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hardware {
    /// The CPU: one device; several "devices" are peers (threads) sharing its cores.
    Cpu,
    /// NVIDIA GPUs, numbered as CUDA numbers them (so `CUDA_VISIBLE_DEVICES` selects them).
    CudaGpus,
    /// The adapters of a graphics API, numbered as `ddexp doctor` lists them; no environment
    /// variable partitions them, so members running at once share them.
    Adapters,
}

/// Memory a job's device holds, as the backend can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub bytes: u64,
    /// What the number is, e.g. "peak resident set of the process".
    pub what: &'static str,
}

/// How to build against LibTorch.
const LIBTORCH_SETUP: &str =
    "install LibTorch with `eval \"$(scripts/libtorch.sh)\"` (`--cpu` for a CPU-only one)";

/// What ddexp knows about a backend, in one place per backend.
struct Facts {
    /// The name on the command line (`--backend cpu`).
    name: &'static str,
    /// The name in prose.
    title: &'static str,
    /// The cargo feature that builds it in (`None`: always built).
    feature: Option<&'static str>,
    built: bool,
    hardware: Hardware,
    /// The Burn backend behind it, for labels.
    library: &'static str,
    /// How to get what the cargo feature builds against, if anything beyond the registries.
    setup: Option<&'static str>,
}

impl Backend {
    /// Every backend, built into this binary or not.
    pub const ALL: [Backend; 5] = [
        Backend::Cpu,
        Backend::Cuda,
        Backend::LibTorch,
        Backend::LibTorchCuda,
        Backend::Wgpu,
    ];

    fn facts(self) -> Facts {
        match self {
            Backend::Cpu => Facts {
                name: "cpu",
                title: "the CPU backend",
                feature: None,
                built: true,
                hardware: Hardware::Cpu,
                library: "flex",
                setup: None,
            },
            Backend::Cuda => Facts {
                name: "cuda",
                title: "CUDA",
                feature: Some("cuda"),
                built: cfg!(feature = "cuda"),
                hardware: Hardware::CudaGpus,
                library: "burn-cuda",
                setup: None,
            },
            Backend::LibTorch => Facts {
                name: "libtorch",
                title: "LibTorch",
                feature: Some("tch"),
                built: cfg!(feature = "tch"),
                hardware: Hardware::Cpu,
                library: "burn-tch",
                setup: Some(LIBTORCH_SETUP),
            },
            Backend::LibTorchCuda => Facts {
                name: "libtorch-cuda",
                title: "LibTorch",
                feature: Some("tch"),
                built: cfg!(feature = "tch"),
                hardware: Hardware::CudaGpus,
                library: "burn-tch",
                setup: Some(LIBTORCH_SETUP),
            },
            Backend::Wgpu => Facts {
                name: "wgpu",
                title: "wgpu",
                feature: Some("wgpu"),
                built: cfg!(feature = "wgpu"),
                hardware: Hardware::Adapters,
                library: "burn-wgpu",
                setup: None,
            },
        }
    }

    /// The name on the command line (`--backend cpu`).
    pub fn name(self) -> &'static str {
        self.facts().name
    }

    /// The backend called `name` on the command line (any case).
    pub fn from_name(name: &str) -> Option<Backend> {
        Backend::ALL
            .into_iter()
            .find(|b| b.name().eq_ignore_ascii_case(name))
    }

    /// The cargo feature that builds this backend in (`None`: always built).
    pub fn feature(self) -> Option<&'static str> {
        self.facts().feature
    }

    /// Whether this binary was built with the backend.
    pub fn is_built(self) -> bool {
        self.facts().built
    }

    pub fn hardware(self) -> Hardware {
        self.facts().hardware
    }

    /// The Burn backend behind it (`flex`, `burn-cuda`, ...).
    pub fn library(self) -> &'static str {
        self.facts().library
    }

    /// What to tell a user who asks for a backend this binary lacks.
    pub fn missing_message(self) -> String {
        let Facts {
            title,
            feature,
            setup,
            ..
        } = self.facts();
        let feature = feature.unwrap_or_default();
        let setup = setup.map(|s| format!("{s}, then ")).unwrap_or_default();
        format!(
            "this ddexp was built without {title}; {setup}rebuild with `cargo build --release \
             --features {feature}` to use it, or run on the CPU (topology.backend: Cpu in an \
             experiment, --backend cpu for eval and sample)"
        )
    }

    /// An error when this binary lacks the backend.
    pub fn require_built(self) -> Result<()> {
        if !self.is_built() {
            bail!(self.missing_message());
        }
        Ok(())
    }
}

/// One device a backend sees on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The index an experiment's `topology.devices` uses.
    pub index: usize,
    pub name: String,
    /// Total memory, where the backend tells.
    pub memory: Option<u64>,
}

impl Backend {
    /// The devices this backend sees here. An error says why it sees none (not built in, no
    /// driver, ...).
    pub fn devices(self) -> Result<Vec<DeviceInfo>> {
        self.require_built()?;
        match self {
            Backend::Cpu => Ok(vec![cpu()]),
            #[cfg(feature = "tch")]
            Backend::LibTorch => {
                let mut cpu = cpu();
                cpu.name = format!("{} ({} LibTorch threads)", cpu.name, tch::get_num_threads());
                Ok(vec![cpu])
            }
            #[cfg(feature = "cuda")]
            Backend::Cuda => cuda::devices(),
            #[cfg(feature = "tch")]
            Backend::LibTorchCuda => Ok(libtorch::devices()),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => Ok(adapters::devices()),
            #[allow(unreachable_patterns)] // every backend may be built in
            missing => Err(anyhow::anyhow!(missing.missing_message())),
        }
    }
}

/// The CPU as one device: its model, cores and memory (Linux; less elsewhere).
fn cpu() -> DeviceInfo {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
        .map_or("CPU", str::trim);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024);
    DeviceInfo {
        index: 0,
        name: format!("{model}, {cores} cores"),
        memory,
    }
}

/// The devices a [`Job`] runs on.
pub struct Devices<B: burn::tensor::backend::Backend> {
    pub backend: Backend,
    /// The experiment's device indices, one per device below.
    pub indices: Vec<usize>,
    pub devices: Vec<B::Device>,
    /// How to read the memory a device holds, where the backend can tell.
    memory: fn(&B::Device) -> Option<Memory>,
}

impl<B: burn::tensor::backend::Backend> Devices<B> {
    /// e.g. `cpu (flex)` or `cuda:1`.
    pub fn label(&self) -> String {
        match self.backend.hardware() {
            Hardware::Cpu => format!("{} ({})", self.backend.name(), self.backend.library()),
            Hardware::CudaGpus | Hardware::Adapters => {
                format!("{}:{}", self.backend.name(), self.indices[0])
            }
        }
    }

    /// Memory the first device holds now (the resident set on the CPU, which only grows).
    pub fn memory(&self) -> Option<Memory> {
        (self.memory)(&self.devices[0])
    }
}

/// Work that runs on the devices of whichever backend an experiment names. Training wraps
/// the backend in `burn::backend::Autodiff<B>` itself.
pub trait Job {
    type Output;
    fn run<B: burn::tensor::backend::Backend>(self, devices: &Devices<B>) -> Result<Self::Output>;
}

/// Runs `job` on devices `indices` of `backend`. On the CPU, each index is one peer of the
/// single CPU device. A backend this binary lacks, or a device the machine does not have, is
/// an error before the job starts.
pub fn run<J: Job>(backend: Backend, indices: &[usize], job: J) -> Result<J::Output> {
    let indices = indices.to_vec();
    match backend {
        Backend::Cpu => job.run(&Devices::<burn::backend::Flex> {
            backend,
            devices: vec![burn::backend::flex::FlexDevice; indices.len()],
            indices,
            memory: |_| peak_resident_set(),
        }),
        #[cfg(feature = "cuda")]
        Backend::Cuda => job.run(&Devices::<burn::backend::Cuda> {
            backend,
            devices: indices
                .iter()
                .map(|&i| cuda::device(i))
                .collect::<Result<_>>()?,
            indices,
            memory: cuda::reserved,
        }),
        #[cfg(feature = "wgpu")]
        Backend::Wgpu => job.run(&Devices::<burn::backend::Wgpu> {
            backend,
            devices: indices
                .iter()
                .map(|&i| adapters::device(i))
                .collect::<Result<_>>()?,
            indices,
            memory: adapters::reserved,
        }),
        #[cfg(feature = "tch")]
        Backend::LibTorch => job.run(&Devices::<burn::backend::LibTorch> {
            backend,
            devices: vec![burn::backend::libtorch::LibTorchDevice::Cpu; indices.len()],
            indices,
            memory: |_| peak_resident_set(),
        }),
        #[cfg(feature = "tch")]
        Backend::LibTorchCuda => job.run(&Devices::<burn::backend::LibTorch> {
            backend,
            devices: indices
                .iter()
                .map(|&i| libtorch::cuda_device(i))
                .collect::<Result<_>>()?,
            indices,
            memory: |_| None,
        }),
        #[allow(unreachable_patterns)] // every backend may be built in
        missing => Err(anyhow::anyhow!(missing.missing_message())),
    }
}

/// Memory free for a new job on `backend` now, where the backend can tell: on the CPU,
/// MemAvailable of /proc/meminfo (what the kernel can give without swapping); `None`
/// elsewhere (a GPU's free memory is not read yet, so jobs there are not checked).
pub fn available_memory(backend: Backend) -> Option<Memory> {
    match backend.hardware() {
        Hardware::Cpu => {
            let info = std::fs::read_to_string("/proc/meminfo").ok()?;
            let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(Memory {
                bytes: kib.saturating_mul(1024),
                what: "MemAvailable in /proc/meminfo",
            })
        }
        _ => None,
    }
}

/// The largest buffer `backend` can hold one tensor in, where the API bounds it: wgpu binds
/// no storage buffer above its adapter's limit, and cubecl keeps every tensor in one binding
/// (on Vulkan devices with 64-bit shader indexing cubecl lifts the limit; `--force` lets
/// such a job through). The limit is adapter 0's, the one runs use unless
/// `topology.devices` says otherwise.
pub fn largest_buffer(backend: Backend) -> Option<Memory> {
    match backend {
        #[cfg(feature = "wgpu")]
        Backend::Wgpu => adapters::largest_buffer(),
        _ => None,
    }
}

/// Peak resident set size of this process (Linux: VmHWM in /proc/self/status).
fn peak_resident_set() -> Option<Memory> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(Memory {
        bytes: kib * 1024,
        what: "peak resident set of the process",
    })
}

#[cfg(feature = "cuda")]
mod cuda {
    use anyhow::{Context, bail};
    use burn::backend::cuda::CudaDevice;
    use cudarc::driver::result;

    use super::{DeviceInfo, Memory};

    /// The GPUs the CUDA driver reports. Asked of the driver directly: the runtime panics
    /// where the driver is missing.
    pub fn devices() -> anyhow::Result<Vec<DeviceInfo>> {
        // SAFETY: only looks for the driver library; nothing in it is called.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            bail!("the NVIDIA driver (libcuda.so) is not installed");
        }
        result::init().context("the CUDA driver does not start")?;
        let count = result::device::get_count().context("the CUDA driver lists no devices")?;
        (0..count)
            .map(|ordinal| {
                let device = result::device::get(ordinal)?;
                // SAFETY: `device` comes from `get`.
                let memory = unsafe { result::device::total_mem(device) }.ok();
                Ok(DeviceInfo {
                    index: ordinal as usize,
                    name: result::device::get_name(device)?,
                    memory: memory.map(|bytes| bytes as u64),
                })
            })
            .collect::<Result<_, cudarc::driver::DriverError>>()
            .context("the CUDA driver cannot describe its devices")
    }

    /// CUDA device `index`, checked: a machine without the driver or without that device
    /// gives an error that says so instead of a panic deep inside the runtime.
    pub fn device(index: usize) -> anyhow::Result<CudaDevice> {
        use burn::tensor::Tensor;
        let seen = devices().with_context(|| format!("cannot use CUDA device {index}"))?;
        if index >= seen.len() {
            bail!(
                "cannot use CUDA device {index}: the driver sees {} GPU(s) (`nvidia-smi` lists \
                 them; CUDA_VISIBLE_DEVICES may hide some)",
                seen.len()
            );
        }
        let device = CudaDevice::new(index);
        let probe = std::panic::catch_unwind(|| {
            let t = Tensor::<burn::backend::Cuda, 1>::from_floats([1.0, 2.0], &device);
            t.sum().into_scalar()
        });
        match probe {
            Ok(_) => Ok(device),
            Err(panic) => bail!(
                "cannot use CUDA device {index} ({}): {}",
                seen[index].name,
                super::panic_message(&*panic)
            ),
        }
    }

    /// Bytes the CUDA allocator holds on `device` (what the process costs the GPU, padding
    /// and pooled blocks included).
    pub fn reserved(device: &CudaDevice) -> Option<Memory> {
        use burn::cubecl::Runtime;
        let usage = burn::cubecl::cuda::CudaRuntime::client(device)
            .memory_usage()
            .ok()?;
        Some(Memory {
            bytes: usage.bytes_reserved,
            what: "reserved by the CUDA allocator",
        })
    }
}

#[cfg(feature = "wgpu")]
mod adapters {
    use anyhow::bail;
    use burn::backend::wgpu::WgpuDevice;
    use wgpu::{Adapter, DeviceType};

    use super::{DeviceInfo, Memory};

    /// The graphics API cubecl runs on here.
    #[cfg(target_os = "macos")]
    const API: wgpu::Backends = wgpu::Backends::METAL;
    #[cfg(not(target_os = "macos"))]
    const API: wgpu::Backends = wgpu::Backends::VULKAN;

    /// The adapters of that API, in the order device indices count them.
    fn adapters() -> Vec<Adapter> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: API,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        ready(instance.enumerate_adapters(API))
    }

    /// The value of a future that is ready at once (native adapter enumeration is).
    fn ready<F: Future>(future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            if let std::task::Poll::Ready(value) = future.as_mut().poll(&mut context) {
                return value;
            }
            std::thread::yield_now();
        }
    }

    pub fn devices() -> Vec<DeviceInfo> {
        adapters()
            .iter()
            .enumerate()
            .map(|(index, adapter)| {
                let info = adapter.get_info();
                DeviceInfo {
                    index,
                    name: format!(
                        "{} ({:?} {:?}, {} {})",
                        info.name, info.backend, info.device_type, info.driver, info.driver_info
                    ),
                    memory: None,
                }
            })
            .collect()
    }

    /// Adapter 0's largest storage buffer binding.
    pub fn largest_buffer() -> Option<Memory> {
        let adapter = adapters().into_iter().next()?;
        Some(Memory {
            bytes: adapter.limits().max_storage_buffer_binding_size,
            what: "the largest buffer wgpu adapter 0 binds",
        })
    }

    /// Adapter `index` as cubecl names it: by its type and its position among adapters of
    /// that type. Asked of wgpu first: cubecl panics where no adapter matches.
    pub fn device(index: usize) -> anyhow::Result<WgpuDevice> {
        let adapters = adapters();
        let Some(adapter) = adapters.get(index) else {
            bail!(
                "cannot use wgpu device {index}: {} {API:?} adapter(s) found (`ddexp doctor` \
                 lists them; without a GPU, Mesa's software driver lavapipe provides one: \
                 `apt-get install mesa-vulkan-drivers`)",
                adapters.len()
            );
        };
        let kind = adapter.get_info().device_type;
        let ordinal = adapters[..index]
            .iter()
            .filter(|a| a.get_info().device_type == kind)
            .count();
        Ok(match kind {
            DeviceType::DiscreteGpu => WgpuDevice::DiscreteGpu(ordinal),
            DeviceType::IntegratedGpu => WgpuDevice::IntegratedGpu(ordinal),
            DeviceType::VirtualGpu => WgpuDevice::VirtualGpu(ordinal),
            DeviceType::Cpu => WgpuDevice::Cpu,
            DeviceType::Other => WgpuDevice::DefaultDevice,
        })
    }

    /// Bytes cubecl's memory pools hold on `device`.
    pub fn reserved(device: &WgpuDevice) -> Option<Memory> {
        use burn::cubecl::Runtime;
        let usage = burn::backend::wgpu::WgpuRuntime::client(device)
            .memory_usage()
            .ok()?;
        Some(Memory {
            bytes: usage.bytes_reserved,
            what: "reserved by the wgpu allocator",
        })
    }
}

#[cfg(feature = "tch")]
mod libtorch {
    use burn::backend::libtorch::LibTorchDevice;

    /// CUDA device `index` as LibTorch sees it, checked: LibTorch without CUDA (a CPU-only
    /// install) or a missing GPU is an error, not a panic at the first tensor.
    pub fn cuda_device(index: usize) -> anyhow::Result<LibTorchDevice> {
        let count = tch::Cuda::device_count().max(0) as usize;
        if index >= count {
            anyhow::bail!(
                "cannot use CUDA device {index} with LibTorch: it sees {count} CUDA device(s) \
                 (a CPU-only LibTorch sees none: install the full one with \
                 `eval \"$(scripts/libtorch.sh)\"` and rebuild; `nvidia-smi` lists the GPUs)"
            );
        }
        Ok(LibTorchDevice::Cuda(index))
    }

    /// The CUDA devices LibTorch sees (it does not tell their names or memory).
    pub fn devices() -> Vec<super::DeviceInfo> {
        (0..tch::Cuda::device_count().max(0) as usize)
            .map(|index| super::DeviceInfo {
                index,
                name: format!("CUDA device {index}"),
                memory: None,
            })
            .collect()
    }
}

/// The message of a caught panic.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// Where `ddexp eval` and `ddexp sample` run when not where the experiment trained (a model
/// trained on GPUs, evaluated on a laptop; another GPU than the first).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceChoice {
    /// Replaces the experiment's backend.
    pub backend: Option<Backend>,
    /// The device index on that backend (GPUs only: the CPU is one device).
    pub device: Option<usize>,
}

impl DeviceChoice {
    /// The one device to run on, given the backend and devices the model trained on: the
    /// first of those unless the choice says otherwise; a backend other than the trained
    /// one starts at its device 0.
    pub fn resolve(&self, trained: Backend, trained_devices: &[usize]) -> Result<(Backend, usize)> {
        let backend = self.backend.unwrap_or(trained);
        let device = match (backend.hardware(), self.device) {
            (Hardware::Cpu, Some(index)) if index != 0 => bail!(
                "--device {index}: {} is a single device (0); device indices pick a GPU, e.g. \
                 with --backend cuda",
                backend.facts().title
            ),
            (_, Some(index)) => index,
            _ if backend != trained => 0,
            _ => trained_devices.first().copied().unwrap_or(0),
        };
        Ok((backend, device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_choice_keeps_the_trained_backend_and_its_first_device() {
        let chosen = DeviceChoice::default().resolve(Backend::Cuda, &[2, 3]);
        assert_eq!(chosen.unwrap(), (Backend::Cuda, 2));
    }

    #[test]
    fn another_backend_starts_at_device_zero_unless_told() {
        let cpu = DeviceChoice {
            backend: Some(Backend::Cpu),
            device: None,
        };
        assert_eq!(cpu.resolve(Backend::Cuda, &[5]).unwrap(), (Backend::Cpu, 0));
        let gpu3 = DeviceChoice {
            backend: Some(Backend::Cuda),
            device: Some(3),
        };
        assert_eq!(
            gpu3.resolve(Backend::Cpu, &[0]).unwrap(),
            (Backend::Cuda, 3)
        );
    }

    #[test]
    fn the_cpu_has_only_device_zero() {
        let choice = DeviceChoice {
            backend: Some(Backend::Cpu),
            device: Some(1),
        };
        let e = choice.resolve(Backend::Cuda, &[0]).unwrap_err().to_string();
        assert!(
            e.contains("--device 1") && e.contains("--backend cuda"),
            "{e}"
        );
    }

    #[test]
    fn backends_are_named_on_the_command_line_in_any_case() {
        for backend in Backend::ALL {
            assert_eq!(Backend::from_name(backend.name()), Some(backend));
            let upper = backend.name().to_uppercase();
            assert_eq!(Backend::from_name(&upper), Some(backend));
        }
        assert_eq!(Backend::from_name("tpu"), None);
    }

    #[test]
    fn a_missing_backend_says_how_to_rebuild() {
        let cpu = Backend::Cpu;
        assert!(cpu.is_built() && cpu.require_built().is_ok());
        for backend in Backend::ALL.into_iter().filter(|b| !b.is_built()) {
            let e = backend.require_built().unwrap_err().to_string();
            let feature = backend.feature().unwrap();
            assert!(e.contains(&format!("--features {feature}")), "{e}");
        }
    }
}
