//! The working set of a variant: GGUF metadata plus every tensor as f32
//! values (the parent's tensors dequantized), each with its stored form
//! when a `quantize` step produced one. Also which tensors are the
//! projection matrices steps transform, totals, and writing the GGUF.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::{Totals, VariantError};
use crate::model::gguf::GgufFile;

/// A tensor of the working set.
pub struct WTensor {
    /// f32 values: what the model computes with after the steps so far.
    pub values: Tensor,
    /// The quantized form, when a `quantize` step made `values` from it and
    /// nothing changed them since.
    pub stored: Option<QTensor>,
}

impl WTensor {
    pub fn dense(values: Tensor) -> Self {
        Self {
            values,
            stored: None,
        }
    }

    /// The GGML type this tensor is written as.
    pub fn dtype(&self) -> GgmlDType {
        self.stored.as_ref().map_or(GgmlDType::F32, QTensor::dtype)
    }

    pub fn stored_bytes(&self) -> u64 {
        match &self.stored {
            Some(q) => q.storage_size_in_bytes() as u64,
            None => self.values.elem_count() as u64 * 4,
        }
    }
}

/// Metadata and tensors, ordered by name (so the written file is deterministic).
pub struct Working {
    pub arch: String,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, WTensor>,
}

/// A projection matrix's address: `blk.{layer}.{proj}.weight{suffix}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatrixName {
    pub layer: usize,
    pub proj: String,
    /// `""`, `.lr_a` or `.lr_b` (low-rank factors).
    pub suffix: String,
}

/// Parses `blk.N.<proj>.weight[.lr_a|.lr_b]` for the projections of
/// `spec::PROJECTIONS`; `None` for anything else (norms, embeddings).
pub fn matrix_name(name: &str) -> Option<MatrixName> {
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer = layer.parse().ok()?;
    let (proj, suffix) = rest.split_once(".weight")?;
    if !crate::spec::steps::PROJECTIONS.contains(&proj) || !matches!(suffix, "" | ".lr_a" | ".lr_b")
    {
        return None;
    }
    Some(MatrixName {
        layer,
        proj: proj.to_string(),
        suffix: suffix.to_string(),
    })
}

/// The token embedding or output head.
pub fn is_embedding(name: &str) -> bool {
    matches!(name, "token_embd.weight" | "output.weight")
}

impl Working {
    /// Reads every tensor of `gguf`, dequantized to f32. Returns the set and
    /// a description of the source types.
    pub fn load(gguf: &mut GgufFile) -> Result<(Self, String), VariantError> {
        let arch = gguf.architecture()?;
        let metadata: BTreeMap<String, Value> = gguf
            .metadata()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut tensors = BTreeMap::new();
        let mut types: BTreeMap<String, usize> = BTreeMap::new();
        for name in gguf.tensor_names() {
            let q = gguf.tensor(&name)?;
            *types.entry(format!("{:?}", q.dtype())).or_default() += 1;
            let values = q
                .dequantize(&Device::Cpu)
                .map_err(|e| VariantError::tensor(&name, e))?;
            tensors.insert(name, WTensor::dense(values));
        }
        let full = ["F32", "F16", "BF16"];
        let listed = types
            .iter()
            .map(|(t, n)| format!("{t} ({n})"))
            .collect::<Vec<_>>()
            .join(", ");
        let source = if types.keys().all(|t| full.contains(&t.as_str())) {
            format!("full precision: parent tensors {listed}")
        } else {
            format!("requantized: parent tensors dequantized to f32 from {listed}")
        };
        Ok((
            Self {
                arch,
                metadata,
                tensors,
            },
            source,
        ))
    }

    /// Names of the 2-D projection matrices whose projection is in `targets`.
    pub fn matrices(&self, targets: &[String]) -> Vec<String> {
        self.tensors
            .iter()
            .filter(|(n, t)| {
                t.values.rank() == 2 && matrix_name(n).is_some_and(|m| targets.contains(&m.proj))
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Number of decoder blocks (`<arch>.block_count`).
    pub fn block_count(&self) -> Option<usize> {
        let v = self.metadata.get(&format!("{}.block_count", self.arch))?;
        v.to_u32()
            .ok()
            .map(|x| x as usize)
            .or_else(|| v.to_u64().ok().map(|x| x as usize))
            .or_else(|| v.to_i32().ok().map(|x| x as usize))
    }

    pub fn totals(&self) -> Result<Totals, VariantError> {
        let mut t = Totals::default();
        for (name, w) in &self.tensors {
            t.tensors += 1;
            t.params += w.values.elem_count() as u64;
            t.nonzero_params += nonzero(&w.values).map_err(|e| VariantError::tensor(name, e))?;
            t.weight_bytes += w.stored_bytes();
        }
        Ok(t)
    }

    /// Writes the GGUF (metadata and tensors sorted by name) to `path`.
    pub fn write(&self, path: &Path) -> Result<(), VariantError> {
        let io = |e: &dyn std::fmt::Display| VariantError::Io {
            path: path.display().to_string(),
            message: super::first_line(&e.to_string()),
        };
        let mut dense: BTreeMap<&str, QTensor> = BTreeMap::new();
        for (name, w) in self.tensors.iter().filter(|(_, w)| w.stored.is_none()) {
            let q = QTensor::quantize(&w.values, GgmlDType::F32)
                .map_err(|e| VariantError::tensor(name, e))?;
            dense.insert(name, q);
        }
        let tensors: Vec<(&str, &QTensor)> = self
            .tensors
            .iter()
            .filter_map(|(name, w)| {
                let q = w.stored.as_ref().or_else(|| dense.get(name.as_str()))?;
                Some((name.as_str(), q))
            })
            .collect();
        // Our writer aligns to 32 bytes; a parent's other alignment must not be copied.
        let meta: Vec<(&str, &Value)> = self
            .metadata
            .iter()
            .filter(|(k, _)| k.as_str() != "general.alignment")
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        let file = std::fs::File::create(path).map_err(|e| io(&e))?;
        let mut w = std::io::BufWriter::new(file);
        candle_core::quantized::gguf_file::write(&mut w, &meta, &tensors).map_err(|e| io(&e))?;
        use std::io::Write;
        w.flush().map_err(|e| io(&e))?;
        Ok(())
    }
}

/// Number of non-zero elements of a tensor.
pub fn nonzero(t: &Tensor) -> candle_core::Result<u64> {
    let v = t.flatten_all()?.to_vec1::<f32>()?;
    Ok(v.iter().filter(|x| **x != 0.0).count() as u64)
}

/// `‖a − b‖_F / ‖a‖_F` (0 when `a` is zero).
pub fn rel_error(a: &Tensor, b: &Tensor) -> candle_core::Result<f64> {
    let a = a.flatten_all()?.to_vec1::<f32>()?;
    let b = b.flatten_all()?.to_vec1::<f32>()?;
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in a.iter().zip(&b) {
        let d = (*x as f64) - (*y as f64);
        num += d * d;
        den += (*x as f64) * (*x as f64);
    }
    Ok(if den > 0.0 { (num / den).sqrt() } else { 0.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_names() {
        let m = matrix_name("blk.12.ffn_down.weight").expect("matrix");
        assert_eq!(
            (m.layer, m.proj.as_str(), m.suffix.as_str()),
            (12, "ffn_down", "")
        );
        let m = matrix_name("blk.0.attn_q.weight.lr_a").expect("factor");
        assert_eq!(m.suffix, ".lr_a");
        assert!(matrix_name("blk.0.attn_norm.weight").is_none());
        assert!(matrix_name("blk.0.attn_q.bias").is_none());
        assert!(matrix_name("token_embd.weight").is_none());
    }
}
