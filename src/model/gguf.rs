//! Reading GGUF model files: header, metadata look-ups with errors that name
//! the file and key, and tensor loading. Knows nothing about architectures.

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;
use std::collections::HashMap;

/// Metadata key (written by `variant`) listing, for each decoder block of a
/// model with dropped blocks, its index in the original model.
pub const LAYER_ORIGIN_KEY: &str = "slmbench.layer_origin";

/// Errors raised while reading a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: cannot open model file: {source} (check the path in models.yaml or run `slmbench fetch`)")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid GGUF file ({reason}); the file may be truncated or of another format — delete it and fetch it again")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path}: GGUF metadata key `{key}` is missing or has the wrong type ({reason})")]
    Key {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("{path}: tensor `{name}` cannot be read: {reason}")]
    Tensor {
        path: PathBuf,
        name: String,
        reason: String,
    },
}

/// An opened model: GGUF metadata (or its equivalent built from a Hugging
/// Face `config.json`) and tensors under llama.cpp's names.
pub struct GgufFile {
    pub path: PathBuf,
    metadata: HashMap<String, Value>,
    backing: Backing,
}

enum Backing {
    Gguf {
        content: Content,
        reader: BufReader<File>,
        file_len: u64,
    },
    /// Tensors of a safetensors directory, already renamed and converted.
    Tensors(crate::model::file::TensorMap),
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let file = File::open(path).map_err(|source| GgufError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut reader = BufReader::new(file);
        if let Some(reason) = bad_alignment(&mut reader) {
            return Err(GgufError::Invalid {
                path: path.to_path_buf(),
                reason,
            });
        }
        reader
            .seek(std::io::SeekFrom::Start(0))
            .map_err(|source| GgufError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let mut content = Content::read(&mut reader).map_err(|e| GgufError::Invalid {
            path: path.to_path_buf(),
            reason: first_line(&e.to_string()),
        })?;
        check_tensor_extent(path, &content, file_len)?;
        Ok(Self {
            path: path.to_path_buf(),
            metadata: std::mem::take(&mut content.metadata),
            backing: Backing::Gguf {
                content,
                reader,
                file_len,
            },
        })
    }

    /// A model whose metadata and tensors were built elsewhere (safetensors).
    pub fn from_parts(
        path: PathBuf,
        metadata: HashMap<String, Value>,
        tensors: crate::model::file::TensorMap,
    ) -> Self {
        Self {
            path,
            metadata,
            backing: Backing::Tensors(tensors),
        }
    }

    /// Bytes of the model file(s) on disk.
    pub fn file_bytes(&self) -> u64 {
        match &self.backing {
            Backing::Gguf { file_len, .. } => *file_len,
            Backing::Tensors(t) => t.file_bytes,
        }
    }

    fn key_err(&self, key: &str, reason: impl Into<String>) -> GgufError {
        GgufError::Key {
            path: self.path.clone(),
            key: key.to_string(),
            // candle's messages end with a stack trace when RUST_BACKTRACE
            // is set (found by the gguf fuzz target, which runs with it).
            reason: first_line(&reason.into()),
        }
    }

    pub fn value(&self, key: &str) -> Result<&Value, GgufError> {
        self.metadata
            .get(key)
            .ok_or_else(|| self.key_err(key, "missing"))
    }

    pub fn has(&self, key: &str) -> bool {
        self.metadata.contains_key(key)
    }

    pub fn string(&self, key: &str) -> Result<String, GgufError> {
        self.value(key)?
            .to_string()
            .cloned()
            .map_err(|e| self.key_err(key, e.to_string()))
    }

    pub fn u32(&self, key: &str) -> Result<u32, GgufError> {
        let v = self.value(key)?;
        v.to_u32()
            .or_else(|_| v.to_u64().map(|x| x as u32))
            .or_else(|_| v.to_i32().map(|x| x as u32))
            .map_err(|e| self.key_err(key, e.to_string()))
    }

    pub fn f32(&self, key: &str) -> Result<f32, GgufError> {
        let v = self.value(key)?;
        v.to_f32()
            .or_else(|_| v.to_f64().map(|x| x as f32))
            .map_err(|e| self.key_err(key, e.to_string()))
    }

    pub fn bool_or(&self, key: &str, default: bool) -> bool {
        self.metadata
            .get(key)
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(default)
    }

    pub fn opt_u32(&self, key: &str) -> Option<u32> {
        self.has(key).then(|| self.u32(key).ok()).flatten()
    }

    pub fn opt_f32(&self, key: &str) -> Option<f32> {
        self.has(key).then(|| self.f32(key).ok()).flatten()
    }

    /// An array value, each element converted by `f`.
    fn array<T>(
        &self,
        key: &str,
        f: impl Fn(&Value) -> candle_core::Result<T>,
    ) -> Result<Vec<T>, GgufError> {
        let arr = self
            .value(key)?
            .to_vec()
            .map_err(|e| self.key_err(key, e.to_string()))?;
        arr.iter()
            .map(|v| f(v).map_err(|e| self.key_err(key, e.to_string())))
            .collect()
    }

    pub fn strings(&self, key: &str) -> Result<Vec<String>, GgufError> {
        self.array(key, |v| v.to_string().cloned())
    }

    pub fn f32s(&self, key: &str) -> Result<Vec<f32>, GgufError> {
        self.array(key, Value::to_f32)
    }

    pub fn i32s(&self, key: &str) -> Result<Vec<i32>, GgufError> {
        self.array(key, |v| {
            v.to_i32().or_else(|_| v.to_u32().map(|x| x as i32))
        })
    }

    /// `general.architecture`, e.g. `llama`, `qwen2`, `gemma3`.
    pub fn architecture(&self) -> Result<String, GgufError> {
        self.string("general.architecture")
    }

    /// Moves the metadata out into a metadata-only `GgufFile` (no tensors)
    /// and keeps here all but its arrays of more than 1,024 items (the
    /// tokenizer's vocabulary, scores and merges: tens of MB for a 262k
    /// vocabulary; the weights' loader reads scalars only). The tokenizer
    /// is built from the returned half while the weights load from this one.
    pub fn split_metadata(&mut self) -> GgufFile {
        let kept = self
            .metadata
            .iter()
            .filter(|(_, v)| !matches!(v, Value::Array(a) if a.len() > 1024))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        GgufFile {
            path: self.path.clone(),
            metadata: std::mem::replace(&mut self.metadata, kept),
            backing: Backing::Tensors(crate::model::file::TensorMap {
                tensors: HashMap::new(),
                file_bytes: 0,
            }),
        }
    }

    /// All metadata entries (unordered).
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.metadata
    }

    /// Names of all tensors, sorted.
    pub fn tensor_names(&self) -> Vec<String> {
        let mut names: Vec<String> = match &self.backing {
            Backing::Gguf { content, .. } => content.tensor_infos.keys().cloned().collect(),
            Backing::Tensors(t) => t.tensors.keys().cloned().collect(),
        };
        names.sort();
        names
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        match &self.backing {
            Backing::Gguf { content, .. } => content.tensor_infos.contains_key(name),
            Backing::Tensors(t) => t.tensors.contains_key(name),
        }
    }

    pub fn tensor(&mut self, name: &str) -> Result<QTensor, GgufError> {
        let res = match &mut self.backing {
            Backing::Gguf {
                content, reader, ..
            } => content.tensor(reader, name, &Device::Cpu),
            Backing::Tensors(t) => match t.tensors.get(name) {
                Some(tensor) => QTensor::quantize(tensor, crate::model::file::storage_type(tensor)),
                None => Err(candle_core::Error::Msg("no such tensor".into())),
            },
        };
        res.map_err(|e| GgufError::Tensor {
            path: self.path.clone(),
            name: name.to_string(),
            reason: first_line(&e.to_string()),
        })
    }

    /// Counts of tensors and bytes per GGML type, e.g. for provenance.
    pub fn weight_types(&self) -> Vec<(String, usize, u64)> {
        let mut map: std::collections::BTreeMap<String, (usize, u64)> = Default::default();
        let mut add = |dtype: GgmlDType, elems: u64| {
            let bytes = elems / dtype.block_size() as u64 * dtype.type_size() as u64;
            let e = map.entry(format!("{dtype:?}")).or_default();
            e.0 += 1;
            e.1 += bytes;
        };
        match &self.backing {
            Backing::Gguf { content, .. } => {
                for info in content.tensor_infos.values() {
                    add(info.ggml_dtype, info.shape.elem_count() as u64);
                }
            }
            Backing::Tensors(t) => {
                for tensor in t.tensors.values() {
                    add(
                        crate::model::file::storage_type(tensor),
                        tensor.elem_count() as u64,
                    );
                }
            }
        }
        map.into_iter().map(|(k, (n, b))| (k, n, b)).collect()
    }
}

/// llama.cpp's name for `general.file_type` (e.g. `Q4_K_M`), as llama-bench shows it.
pub fn file_type_name(g: &GgufFile) -> Option<String> {
    let name = match g.opt_u32("general.file_type")? {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        32 => "BF16",
        _ => return None,
    };
    Some(name.to_string())
}

/// `general.alignment` when it is not a power of two, as llama.cpp's reader
/// refuses it: candle's divides by it (a zero panicked, found by the gguf
/// fuzz target). Walks the metadata of a v2/v3 header; anything it cannot
/// read is left for candle's reader to report.
fn bad_alignment(r: &mut impl Read) -> Option<String> {
    fn u32_(r: &mut impl Read) -> Option<u32> {
        let mut b = [0u8; 4];
        r.read_exact(&mut b).ok()?;
        Some(u32::from_le_bytes(b))
    }
    fn u64_(r: &mut impl Read) -> Option<u64> {
        let mut b = [0u8; 8];
        r.read_exact(&mut b).ok()?;
        Some(u64::from_le_bytes(b))
    }
    fn skip(r: &mut impl Read, n: u64) -> Option<()> {
        let copied = std::io::copy(&mut r.take(n), &mut std::io::sink()).ok()?;
        (copied == n).then_some(())
    }
    fn string(r: &mut impl Read) -> Option<Vec<u8>> {
        let n = u64_(r)?;
        let mut b = Vec::new();
        r.take(n).read_to_end(&mut b).ok()?;
        (b.len() as u64 == n).then_some(b)
    }
    // Skips a value of type `t`; returns an integer value when it is one.
    fn value(r: &mut impl Read, t: u32, depth: usize) -> Option<Option<i128>> {
        let width: Option<usize> = match t {
            0 | 1 | 7 => Some(1),
            2 | 3 => Some(2),
            4..=6 => Some(4),
            10..=12 => Some(8),
            _ => None,
        };
        if let Some(w) = width {
            let mut b = [0u8; 8];
            r.read_exact(&mut b[..w]).ok()?;
            let v = match t {
                0 => i128::from(b[0]),
                1 => i128::from(b[0] as i8),
                2 => i128::from(u16::from_le_bytes([b[0], b[1]])),
                3 => i128::from(i16::from_le_bytes([b[0], b[1]])),
                4 => i128::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                5 => i128::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                10 => i128::from(u64::from_le_bytes(b)),
                11 => i128::from(i64::from_le_bytes(b)),
                _ => return Some(None),
            };
            return Some(Some(v));
        }
        match t {
            8 => string(r).map(|_| None),
            9 if depth < 4 => {
                let et = u32_(r)?;
                let n = u64_(r)?;
                match et {
                    0 | 1 | 7 => skip(r, n)?,
                    2 | 3 => skip(r, n.checked_mul(2)?)?,
                    4..=6 => skip(r, n.checked_mul(4)?)?,
                    10..=12 => skip(r, n.checked_mul(8)?)?,
                    _ => {
                        for _ in 0..n {
                            value(r, et, depth + 1)?;
                        }
                    }
                }
                Some(None)
            }
            _ => None,
        }
    }
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic).ok()?;
    let version = u32_(r)?;
    if &magic != b"GGUF" || !(2..=3).contains(&version) {
        return None;
    }
    let _tensors = u64_(r)?;
    let kvs = u64_(r)?;
    for _ in 0..kvs {
        let key = string(r)?;
        let t = u32_(r)?;
        let v = value(r, t, 0)?;
        if key == b"general.alignment" {
            if let Some(a) = v {
                if a <= 0 || (a & (a - 1)) != 0 {
                    return Some(format!("general.alignment is {a}, not a power of two"));
                }
            }
            return None;
        }
    }
    None
}

/// A truncated download passes header parsing; catch it before loading tensors.
/// The sizes come from the file, so every step is checked: a shape whose
/// element count does not fit in 64 bits is an invalid file, not an
/// overflow (found by the `gguf` fuzz target).
fn check_tensor_extent(path: &Path, content: &Content, file_len: u64) -> Result<(), GgufError> {
    let invalid = |reason: String| GgufError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let mut end = 0u64;
    for (name, info) in &content.tensor_infos {
        let too_big = || {
            invalid(format!(
                "tensor `{}` claims shape {:?}, more bytes than 64 bits count",
                name.escape_debug(),
                info.shape.dims()
            ))
        };
        let elems = info
            .shape
            .dims()
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(too_big)?;
        let block = info.ggml_dtype.block_size() as u64;
        // A dimension of 0 is no tensor at all (candle would build its
        // blocks from a dangling pointer), and a row (ggml's ne[0], candle's
        // last dimension) must hold whole blocks.
        let row = info.shape.dims().last().copied().unwrap_or(1) as u64;
        if elems == 0 || !row.is_multiple_of(block) {
            return Err(invalid(format!(
                "tensor `{}` has shape {:?}: {}",
                name.escape_debug(),
                info.shape.dims(),
                if elems == 0 {
                    "no elements".to_string()
                } else {
                    format!("rows of {row} are not whole blocks of {block}")
                }
            )));
        }
        let bytes = (elems / block)
            .checked_mul(info.ggml_dtype.type_size() as u64)
            .ok_or_else(too_big)?;
        let tensor_end = content
            .tensor_data_offset
            .checked_add(info.offset)
            .and_then(|v| v.checked_add(bytes))
            .ok_or_else(too_big)?;
        end = end.max(tensor_end);
    }
    if end > file_len {
        return Err(invalid(format!(
            "tensor data needs {end} bytes but the file has {file_len}"
        )));
    }
    Ok(())
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GGUF v3 file with no metadata and one F32 tensor of shape `dims`
    /// at offset 0, followed by `data` bytes of tensor data.
    fn one_tensor_gguf(dims: &[u64], data: usize) -> Vec<u8> {
        one_tensor_gguf_typed(dims, 0, data)
    }

    /// [`one_tensor_gguf`] with ggml type `ggml_type` (8 is Q8_0) and
    /// `dims` in candle's order (the reverse of the file's).
    fn one_tensor_gguf_typed(dims: &[u64], ggml_type: u32, data: usize) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(1u64.to_le_bytes()); // tensors
        b.extend(0u64.to_le_bytes()); // metadata entries
        let name = b"w";
        b.extend((name.len() as u64).to_le_bytes());
        b.extend(name);
        b.extend((dims.len() as u32).to_le_bytes());
        for d in dims.iter().rev() {
            b.extend(d.to_le_bytes());
        }
        b.extend(ggml_type.to_le_bytes());
        b.extend(0u64.to_le_bytes()); // offset
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        b.resize(b.len() + data, 0);
        b
    }

    /// [`one_tensor_gguf`] with one metadata entry, `general.alignment`
    /// as a u32.
    fn aligned_gguf(alignment: u32) -> Vec<u8> {
        let mut b = one_tensor_gguf(&[4, 4], 0);
        b[16..24].copy_from_slice(&1u64.to_le_bytes());
        let key = b"general.alignment";
        let mut kv = (key.len() as u64).to_le_bytes().to_vec();
        kv.extend(key);
        kv.extend(4u32.to_le_bytes());
        kv.extend(alignment.to_le_bytes());
        b.splice(24..24, kv);
        b.truncate(b.len() - b.len() % 32);
        b.resize(b.len() + 128, 0);
        b
    }

    #[test]
    fn an_alignment_that_is_not_a_power_of_two_is_an_invalid_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("a.gguf");
        for bad in [0u32, 24] {
            std::fs::write(&path, aligned_gguf(bad)).expect("write");
            let err = GgufFile::open(&path).err().expect("must fail").to_string();
            assert!(
                err.contains(&format!("general.alignment is {bad}, not a power of two")),
                "{err}"
            );
        }
        std::fs::write(&path, aligned_gguf(64)).expect("write");
        GgufFile::open(&path).expect("a power of two opens");
    }

    #[test]
    fn a_key_error_is_one_line_when_candle_adds_a_backtrace() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, one_tensor_gguf(&[4, 4], 64)).expect("write");
        let g = GgufFile::open(&path).expect("opens");
        let candle = candle_core::Error::WithBacktrace {
            inner: Box::new(candle_core::Error::Msg("not a string F64(1.5)".into())),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        let err = g
            .key_err("tokenizer.ggml.merges", candle.to_string())
            .to_string();
        assert!(!err.contains('\n'), "{err}");
        assert!(
            err.contains("tokenizer.ggml.merges") && err.contains("F64(1.5)"),
            "{err}"
        );
    }

    #[test]
    fn a_tensor_shape_with_no_elements_or_past_64_bits_is_an_invalid_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("huge.gguf");
        std::fs::write(
            &path,
            one_tensor_gguf(&[1 << 20, 1 << 20, 1 << 20, 1 << 20], 64),
        )
        .expect("write");
        let err = GgufFile::open(&path).err().expect("must fail").to_string();
        assert!(err.contains("not a valid GGUF file"), "{err}");
        assert!(err.contains("tensor `w`") && !err.contains('\n'), "{err}");

        // Rows of whole blocks: a Q8_0 tensor with 64-wide rows opens
        // (its 8 rows hold 16 blocks of 34 bytes), 48-wide rows do not.
        std::fs::write(&path, one_tensor_gguf_typed(&[8, 64], 8, 16 * 34)).expect("write");
        GgufFile::open(&path).expect("rows of whole blocks");
        std::fs::write(&path, one_tensor_gguf_typed(&[8, 48], 8, 16 * 34)).expect("write");
        let err = GgufFile::open(&path).err().expect("must fail").to_string();
        assert!(
            err.contains("rows of 48 are not whole blocks of 32"),
            "{err}"
        );

        // Found by the same fuzz target: a dimension of 0.
        std::fs::write(&path, one_tensor_gguf(&[0, 1 << 40], 64)).expect("write");
        let err = GgufFile::open(&path).err().expect("must fail").to_string();
        assert!(
            err.contains("tensor `w`") && err.contains("no elements"),
            "{err}"
        );

        // The same layout with an honest shape opens, and one byte short
        // of its data is caught as truncated.
        std::fs::write(&path, one_tensor_gguf(&[4, 4], 64)).expect("write");
        GgufFile::open(&path).expect("opens");
        std::fs::write(&path, one_tensor_gguf(&[4, 4], 63)).expect("write");
        let err = GgufFile::open(&path).err().expect("must fail").to_string();
        assert!(err.contains("needs"), "{err}");
    }
}
