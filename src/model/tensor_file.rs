//! Safetensors files to and from [`StateDict`]s.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::{DType, TensorData};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::weights::StateDict;

/// Reads every tensor of a safetensors file (floats and integers).
pub fn read(path: &Path) -> Result<StateDict> {
    read_with_metadata(path).map(|(tensors, _)| tensors)
}

/// Reads every tensor and the string metadata of a safetensors file.
pub fn read_with_metadata(path: &Path) -> Result<(StateDict, BTreeMap<String, String>)> {
    read_selected(path, |_| true)
}

/// Reads the tensors whose name `keep` accepts, and the string metadata. The file is
/// memory-mapped, so tensors left out (e.g. a training checkpoint's optimiser moments when
/// only the weights are wanted) are never read into memory.
pub fn read_selected(
    path: &Path,
    keep: impl Fn(&str) -> bool,
) -> Result<(StateDict, BTreeMap<String, String>)> {
    let file = fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    // SAFETY: ddexp replaces weight files by renaming a complete new file over them, which
    // leaves this mapping's inode intact; another program truncating the file while it is
    // mapped is outside what any reader can defend against.
    let bytes = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("cannot read {}", path.display()))?;
    let file = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
    let metadata = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let tensors = file
        .tensors()
        .into_iter()
        .filter(|(name, _)| keep(name))
        .map(|(name, view)| {
            let dtype = match view.dtype() {
                Dtype::F32 => DType::F32,
                Dtype::F64 => DType::F64,
                Dtype::F16 => DType::F16,
                Dtype::BF16 => DType::BF16,
                Dtype::I64 => DType::I64,
                Dtype::I32 => DType::I32,
                Dtype::U8 => DType::U8,
                other => bail!(
                    "{}: tensor `{name}` has type {other:?}, which ddexp does not read",
                    path.display()
                ),
            };
            let data = TensorData::from_bytes_vec(view.data().to_vec(), view.shape(), dtype);
            Ok((name, data))
        })
        .collect::<Result<StateDict>>()?;
    Ok((tensors, metadata))
}

/// Writes `tensors` to `path` atomically: a temporary file in the same folder, then a rename,
/// so a crash never leaves a truncated file under the final name.
pub fn write(path: &Path, tensors: &StateDict, metadata: BTreeMap<String, String>) -> Result<()> {
    let views = tensors
        .0
        .iter()
        .map(|(name, data)| {
            let dtype = match data.dtype {
                DType::F32 => Dtype::F32,
                DType::F64 => Dtype::F64,
                DType::F16 => Dtype::F16,
                DType::BF16 => Dtype::BF16,
                DType::I64 => Dtype::I64,
                DType::I32 => Dtype::I32,
                DType::U8 => Dtype::U8,
                other => bail!("tensor `{name}` has type {other:?}, which ddexp does not write"),
            };
            let view = TensorView::new(dtype, data.shape.to_vec(), data.as_bytes())
                .with_context(|| format!("tensor `{name}`"))?;
            Ok((name.as_str(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata: HashMap<String, String> = metadata.into_iter().collect();
    let bytes = safetensors::serialize(views, Some(metadata))
        .with_context(|| format!("cannot encode {}", path.display()))?;
    crate::results::write_atomic(path, &bytes)
}
