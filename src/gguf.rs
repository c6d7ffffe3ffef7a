//! Reading GGUF model files: header, metadata look-ups with errors that name
//! the file and key, and tensor loading. Knows nothing about architectures.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::QTensor;
use candle_core::Device;

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

/// An opened GGUF file: its parsed header and a reader positioned anywhere.
pub struct GgufFile {
    pub path: PathBuf,
    pub content: Content,
    reader: BufReader<File>,
    file_len: u64,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let file = File::open(path).map_err(|source| GgufError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| GgufError::Invalid {
            path: path.to_path_buf(),
            reason: first_line(&e.to_string()),
        })?;
        let this = Self {
            path: path.to_path_buf(),
            content,
            reader,
            file_len,
        };
        this.check_tensor_extent()?;
        Ok(this)
    }

    /// A truncated download passes header parsing; catch it before loading tensors.
    fn check_tensor_extent(&self) -> Result<(), GgufError> {
        let mut end = 0u64;
        for info in self.content.tensor_infos.values() {
            let elems = info.shape.elem_count() as u64;
            let block = info.ggml_dtype.block_size() as u64;
            let bytes = elems / block * info.ggml_dtype.type_size() as u64;
            end = end.max(self.content.tensor_data_offset + info.offset + bytes);
        }
        if end > self.file_len {
            return Err(GgufError::Invalid {
                path: self.path.clone(),
                reason: format!(
                    "tensor data needs {end} bytes but the file has {}",
                    self.file_len
                ),
            });
        }
        Ok(())
    }

    fn key_err(&self, key: &str, reason: impl Into<String>) -> GgufError {
        GgufError::Key {
            path: self.path.clone(),
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    pub fn value(&self, key: &str) -> Result<&Value, GgufError> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| self.key_err(key, "missing"))
    }

    pub fn has(&self, key: &str) -> bool {
        self.content.metadata.contains_key(key)
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
        self.content
            .metadata
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

    pub fn strings(&self, key: &str) -> Result<Vec<String>, GgufError> {
        let arr = self
            .value(key)?
            .to_vec()
            .map_err(|e| self.key_err(key, e.to_string()))?;
        arr.iter()
            .map(|v| {
                v.to_string()
                    .cloned()
                    .map_err(|e| self.key_err(key, e.to_string()))
            })
            .collect()
    }

    pub fn f32s(&self, key: &str) -> Result<Vec<f32>, GgufError> {
        let arr = self
            .value(key)?
            .to_vec()
            .map_err(|e| self.key_err(key, e.to_string()))?;
        arr.iter()
            .map(|v| v.to_f32().map_err(|e| self.key_err(key, e.to_string())))
            .collect()
    }

    pub fn i32s(&self, key: &str) -> Result<Vec<i32>, GgufError> {
        let arr = self
            .value(key)?
            .to_vec()
            .map_err(|e| self.key_err(key, e.to_string()))?;
        arr.iter()
            .map(|v| {
                v.to_i32()
                    .or_else(|_| v.to_u32().map(|x| x as i32))
                    .map_err(|e| self.key_err(key, e.to_string()))
            })
            .collect()
    }

    /// `general.architecture`, e.g. `llama`, `qwen2`, `gemma3`.
    pub fn architecture(&self) -> Result<String, GgufError> {
        self.string("general.architecture")
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    pub fn tensor(&mut self, name: &str) -> Result<QTensor, GgufError> {
        self.content
            .tensor(&mut self.reader, name, &Device::Cpu)
            .map_err(|e| GgufError::Tensor {
                path: self.path.clone(),
                name: name.to_string(),
                reason: first_line(&e.to_string()),
            })
    }

    /// Counts of tensors and bytes per GGML type, e.g. for provenance.
    pub fn weight_types(&self) -> Vec<(String, usize, u64)> {
        let mut map: std::collections::BTreeMap<String, (usize, u64)> = Default::default();
        for info in self.content.tensor_infos.values() {
            let elems = info.shape.elem_count() as u64;
            let bytes = elems / info.ggml_dtype.block_size() as u64
                * info.ggml_dtype.type_size() as u64;
            let e = map.entry(format!("{:?}", info.ggml_dtype)).or_default();
            e.0 += 1;
            e.1 += bytes;
        }
        map.into_iter().map(|(k, (n, b))| (k, n, b)).collect()
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}
