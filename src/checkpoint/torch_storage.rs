//! Every tensor of a PyTorch zip checkpoint checked against its storage before a byte of
//! it is trusted.
//!
//! burn-store's reader fills a tensor with zeros when its storage entry is missing from the
//! zip or shorter than the tensor needs, and reads views as if they were contiguous; an
//! import would then succeed with wrong weights. So the pickle is walked here first, without
//! executing anything: each `torch._utils._rebuild_tensor_v2(storage, offset, shape,
//! stride, ...)` gives the storage's key, element type and length, the offset, the shape
//! and the strides, and each must fit the zip entry `<archive>/data/<key>`:
//! (offset + elements of shape) × element size ≤ the entry's size, with the strides of a
//! contiguous tensor. The walk understands the opcodes burn-store's reader does; values it
//! does not need are kept as placeholders, and shared values (the memo) are shared, never
//! copied, so a hostile pickle cannot make the walk allocate more than its own size.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

use anyhow::{Context, Result, bail};

/// The largest pickle read: nanoDD's `data.pkl` is tens of kilobytes.
const MAX_PICKLE_BYTES: u64 = 64 << 20;

/// A tensor the checkpoint rebuilds, as its pickle describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTensor {
    pub storage: String,
    pub element_size: u64,
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Option<Vec<u64>>,
    /// Elements of the storage, when the pickle records it.
    pub storage_elements: Option<u64>,
}

/// Checks every tensor of the zip checkpoint `path` against its storage; returns the bytes
/// the tensors take once read.
pub fn check(path: &Path) -> Result<u64> {
    let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut zip = zip::ZipArchive::new(file).with_context(|| {
        format!(
            "{} is not a zip archive: ddexp reads the checkpoints torch.save writes since \
             PyTorch 1.6 (a zip of data.pkl and data/<storage> entries)",
            path.display()
        )
    })?;
    let mut storages: HashMap<String, u64> = HashMap::new();
    let mut pickle_entry = None;
    for i in 0..zip.len() {
        let entry = zip.by_index_raw(i)?;
        let name = entry.name().to_string();
        let parts: Vec<&str> = name.rsplitn(3, '/').collect();
        match parts.as_slice() {
            [key, "data", ..] => {
                storages.insert(key.to_string(), entry.size());
            }
            ["data.pkl", ..] => pickle_entry = Some((name.clone(), entry.size())),
            _ => {}
        }
    }
    let Some((pickle_name, pickle_size)) = pickle_entry else {
        bail!(
            "{} has no data.pkl: it is not a PyTorch checkpoint",
            path.display()
        );
    };
    if pickle_size > MAX_PICKLE_BYTES {
        bail!(
            "{}: its data.pkl is {pickle_size} bytes; a checkpoint's pickle is a few \
             kilobytes (at most {MAX_PICKLE_BYTES} are read)",
            path.display()
        );
    }
    let mut pickle = Vec::with_capacity(pickle_size as usize);
    zip.by_name(&pickle_name)?
        .take(MAX_PICKLE_BYTES)
        .read_to_end(&mut pickle)
        .with_context(|| format!("cannot read {pickle_name} in {}", path.display()))?;
    let tensors = tensors(&pickle)
        .with_context(|| format!("{}: its data.pkl cannot be read", path.display()))?;
    let mut total: u64 = 0;
    for tensor in &tensors {
        let bytes = fits(tensor, &storages).with_context(|| {
            format!(
                "{} is damaged: a tensor of shape {:?} in storage data/{}",
                path.display(),
                tensor.shape,
                tensor.storage
            )
        })?;
        total = total.saturating_add(bytes);
    }
    Ok(total)
}

/// The bytes `tensor` takes, once checked against the sizes of the zip's storages.
fn fits(tensor: &StoredTensor, storages: &HashMap<String, u64>) -> Result<u64> {
    let Some(&stored) = storages.get(&tensor.storage) else {
        bail!("its storage entry is missing from the zip");
    };
    let elements = tensor
        .shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .context("its shape has more elements than 2^64")?;
    let needed = tensor
        .offset
        .checked_add(elements)
        .and_then(|n| n.checked_mul(tensor.element_size))
        .context("its offset and shape overflow 64 bits")?;
    if elements > 0 && needed > stored {
        bail!(
            "it needs bytes up to {needed} (offset {} + {elements} elements × {} bytes), but \
             the storage holds {stored}",
            tensor.offset,
            tensor.element_size
        );
    }
    if let Some(n) = tensor.storage_elements {
        let declared = n.checked_mul(tensor.element_size);
        if declared.is_none_or(|d| d > stored) {
            bail!(
                "the pickle declares a storage of {n} elements × {} bytes, but the zip entry \
                 holds {stored} bytes",
                tensor.element_size
            );
        }
    }
    if let Some(stride) = &tensor.stride
        && !contiguous(&tensor.shape, stride)
    {
        bail!(
            "it is a strided view (stride {stride:?}), which ddexp would read as contiguous; \
             save the checkpoint with contiguous tensors"
        );
    }
    Ok(elements.saturating_mul(tensor.element_size))
}

/// Whether `stride` is the row-major stride of `shape` (dimensions of size 1 may have any).
fn contiguous(shape: &[u64], stride: &[u64]) -> bool {
    if shape.len() != stride.len() {
        return false;
    }
    let mut expected: u64 = 1;
    for (&size, &step) in shape.iter().zip(stride).rev() {
        if size > 1 && step != expected {
            return false;
        }
        expected = expected.saturating_mul(size);
    }
    true
}

/// A value on the pickle machine's stack: only what describes tensors is kept.
#[derive(Debug)]
enum V {
    Mark,
    Global(String, String),
    Str(String),
    Int(i64),
    Tuple(Vec<Rc<V>>),
    /// A persistent id (a storage tuple).
    Persistent(Rc<V>),
    /// Anything else: dicts, lists, floats, rebuilt tensors, objects.
    Other,
}

/// The tensors a pickle rebuilds, in order.
pub fn tensors(pickle: &[u8]) -> Result<Vec<StoredTensor>> {
    let mut r = Reader {
        data: pickle,
        pos: 0,
    };
    let mut stack: Vec<Rc<V>> = vec![];
    let mut memo: HashMap<u32, Rc<V>> = HashMap::new();
    let mut found = vec![];
    let pop = |stack: &mut Vec<Rc<V>>| stack.pop().context("stack underflow");
    let to_mark = |stack: &mut Vec<Rc<V>>| -> Result<Vec<Rc<V>>> {
        let at = stack
            .iter()
            .rposition(|v| matches!(**v, V::Mark))
            .context("no mark")?;
        let items = stack.split_off(at + 1);
        stack.pop();
        Ok(items)
    };
    loop {
        let op = r.byte()?;
        match op {
            0x80 => {
                r.byte()?;
            }
            b'c' => {
                let module = r.line()?;
                let name = r.line()?;
                stack.push(Rc::new(V::Global(module, name)));
            }
            b'q' => {
                let i = u32::from(r.byte()?);
                memo.insert(i, stack.last().context("empty stack")?.clone());
            }
            b'r' => {
                let i = r.u32()?;
                memo.insert(i, stack.last().context("empty stack")?.clone());
            }
            0x94 => {
                let i = memo.len() as u32;
                memo.insert(i, stack.last().context("empty stack")?.clone());
            }
            b'h' => {
                let i = u32::from(r.byte()?);
                stack.push(memo.get(&i).context("memo miss")?.clone());
            }
            b'j' => {
                let i = r.u32()?;
                stack.push(memo.get(&i).context("memo miss")?.clone());
            }
            b')' => stack.push(Rc::new(V::Tuple(vec![]))),
            b'(' => stack.push(Rc::new(V::Mark)),
            b'X' => {
                let n = r.u32()? as usize;
                stack.push(Rc::new(V::Str(r.text(n)?)));
            }
            b'U' => {
                let n = usize::from(r.byte()?);
                stack.push(Rc::new(V::Str(r.text(n)?)));
            }
            b'J' => stack.push(Rc::new(V::Int(i64::from(r.i32()?)))),
            b'K' => stack.push(Rc::new(V::Int(i64::from(r.byte()?)))),
            b'M' => {
                let b = r.take(2)?;
                stack.push(Rc::new(V::Int(i64::from(u16::from_le_bytes([b[0], b[1]])))));
            }
            b'I' => {
                let line = r.line()?;
                let v = line.trim().parse::<i64>().unwrap_or(0);
                stack.push(Rc::new(V::Int(v)));
            }
            0x8a => {
                let n = usize::from(r.byte()?);
                let bytes = r.take(n)?;
                let mut v: i64 = 0;
                for (i, &b) in bytes.iter().enumerate().take(8) {
                    v |= i64::from(b) << (8 * i);
                }
                if n < 8 && bytes.last().is_some_and(|&b| b & 0x80 != 0) {
                    v |= -1i64 << (8 * n);
                }
                stack.push(Rc::new(V::Int(v)));
            }
            b't' => {
                let items = to_mark(&mut stack)?;
                stack.push(Rc::new(V::Tuple(items)));
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                if stack.len() < n {
                    bail!("stack underflow");
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Rc::new(V::Tuple(items)));
            }
            b'Q' => {
                let pid = pop(&mut stack)?;
                stack.push(Rc::new(V::Persistent(pid)));
            }
            0x88 | 0x89 | b'N' => stack.push(Rc::new(V::Other)),
            b'G' => {
                r.take(8)?;
                stack.push(Rc::new(V::Other));
            }
            b'}' | b']' => stack.push(Rc::new(V::Other)),
            b'd' | b'l' => {
                to_mark(&mut stack)?;
                stack.push(Rc::new(V::Other));
            }
            b's' => {
                pop(&mut stack)?;
                pop(&mut stack)?;
            }
            b'a' => {
                pop(&mut stack)?;
            }
            b'u' | b'e' => {
                to_mark(&mut stack)?;
            }
            b'b' => {
                pop(&mut stack)?;
            }
            b'R' | 0x81 => {
                let args = pop(&mut stack)?;
                let callable = pop(&mut stack)?;
                if let V::Global(module, name) = &*callable
                    && module == "torch._utils"
                    && (name == "_rebuild_tensor_v2" || name == "_rebuild_tensor")
                {
                    found.push(rebuilt(&args)?);
                }
                stack.push(Rc::new(V::Other));
            }
            b'.' => return Ok(found),
            other => bail!("pickle opcode 0x{other:02x} is not one torch.save writes"),
        }
    }
}

/// The tensor of `_rebuild_tensor_v2(storage, offset, shape, stride, ...)`.
fn rebuilt(args: &V) -> Result<StoredTensor> {
    let V::Tuple(args) = args else {
        bail!("a tensor's arguments are not a tuple");
    };
    let int = |v: &V| match v {
        V::Int(n) if *n >= 0 => Some(*n as u64),
        _ => None,
    };
    let ints = |v: &V| match v {
        V::Tuple(items) => items.iter().map(|i| int(i)).collect::<Option<Vec<u64>>>(),
        _ => None,
    };
    let Some(V::Persistent(pid)) = args.first().map(|a| &**a) else {
        bail!("a tensor without a storage");
    };
    let V::Tuple(pid) = &**pid else {
        bail!("a storage id that is not a tuple");
    };
    let storage_type = match pid.get(1).map(|v| &**v) {
        Some(V::Global(_, name)) | Some(V::Str(name)) => name.as_str(),
        _ => bail!("a storage without a type"),
    };
    let element_size = match storage_type {
        "DoubleStorage" | "LongStorage" => 8,
        "FloatStorage" | "IntStorage" => 4,
        "HalfStorage" | "BFloat16Storage" | "ShortStorage" => 2,
        "CharStorage" | "ByteStorage" | "BoolStorage" => 1,
        other => bail!("a storage of type {other}, which ddexp does not read"),
    };
    let Some(V::Str(key)) = pid.get(2).map(|v| &**v) else {
        bail!("a storage without a key");
    };
    let offset = args
        .get(1)
        .and_then(|v| int(v))
        .context("a tensor without a storage offset")?;
    let shape = args
        .get(2)
        .and_then(|v| ints(v))
        .context("a tensor without a shape")?;
    Ok(StoredTensor {
        storage: key.clone(),
        element_size,
        offset,
        stride: args.get(3).and_then(|v| ints(v)),
        shape,
        storage_elements: pid.get(4).and_then(|v| int(v)),
    })
}

/// The pickle's bytes, read forward.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            bail!("the pickle ends early");
        };
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i32(&mut self) -> Result<i32> {
        Ok(self.u32()? as i32)
    }

    fn text(&mut self, n: usize) -> Result<String> {
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }

    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .context("the pickle ends early")?;
        let text = String::from_utf8_lossy(&rest[..n])
            .trim_end_matches('\r')
            .to_string();
        self.pos += n + 1;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_of_contiguous_tensors() {
        assert!(contiguous(&[3, 4], &[4, 1]));
        assert!(contiguous(&[1, 4], &[99, 1]));
        assert!(contiguous(&[], &[]));
        assert!(!contiguous(&[3, 4], &[1, 3]));
    }

    #[test]
    fn a_tensor_past_its_storage_or_without_one_is_refused() {
        let storages: HashMap<String, u64> = [("0".to_string(), 48)].into();
        let tensor = StoredTensor {
            storage: "0".into(),
            element_size: 4,
            offset: 0,
            shape: vec![3, 4],
            stride: Some(vec![4, 1]),
            storage_elements: Some(12),
        };
        assert_eq!(fits(&tensor, &storages).unwrap(), 48);
        let past = StoredTensor {
            offset: 1,
            ..tensor.clone()
        };
        let err = fits(&past, &storages).unwrap_err().to_string();
        assert!(err.contains("holds 48"), "{err}");
        let elsewhere = StoredTensor {
            storage: "1".into(),
            ..tensor.clone()
        };
        let err = fits(&elsewhere, &storages).unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
        let huge = StoredTensor {
            shape: vec![u64::MAX, 2],
            ..tensor
        };
        assert!(fits(&huge, &storages).is_err());
    }
}
