//! Safetensors files to and from [`StateDict`]s: the container of every weights file ddexp
//! writes (checkpoints and model folders).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::{DType, TensorData};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::model::StateDict;

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
    // SAFETY: ddexp replaces these files by rename, never in place, so the mapped bytes do
    // not change under us; each tensor is copied out before the map is dropped. Mapping
    // instead of reading keeps a 1.5 GB checkpoint from being held twice in memory.
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
    // Streamed to disk rather than built in memory: a text8 checkpoint is 1.5 GB.
    let tmp = crate::results::temp_path(path);
    let written = safetensors::serialize_to_file(views, Some(metadata), &tmp)
        .map_err(std::io::Error::other)
        .and_then(|()| fs::File::open(&tmp)?.sync_all());
    crate::results::finish_atomic(&tmp, path, written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DitConfig;

    #[test]
    fn safetensors_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let config = DitConfig {
            num_classes: 7,
            n_embed: 16,
            n_heads: 2,
            n_blocks: 1,
            n_cond: 8,
            dropout: 0.0,
        };
        let mut weights = config.init_state_dict(2);
        weights.insert("steps", TensorData::new(vec![3i64, 4], [2]));
        let metadata = [("k".to_string(), "v".to_string())].into();
        write(&path, &weights, metadata).unwrap();
        let (read_back, metadata) = read_with_metadata(&path).unwrap();
        assert_eq!(read_back, weights);
        assert_eq!(metadata["k"], "v");
        // Only the final file is left behind.
        let files: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(files.len(), 1);

        fs::write(&path, b"not safetensors").unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("is not a valid safetensors file"), "{err}");
    }
}
