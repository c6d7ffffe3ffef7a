//! The KV cache of one layer: keys and values of the cached positions,
//! appended to and cut back to a shared prefix.

use candle_core::{Result, Tensor};

/// Keys and values of the positions seen so far, `[1, kv_heads, len, head_dim]`.
#[derive(Default, Clone)]
pub struct KvCache {
    kv: Option<(Tensor, Tensor)>,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.kv
            .as_ref()
            .and_then(|(k, _)| k.dim(2).ok())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn append(&mut self, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let kv = match self.kv.take() {
            None => (k.contiguous()?, v.contiguous()?),
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
        };
        self.kv = Some(kv.clone());
        Ok(kv)
    }

    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len == 0 {
            self.kv = None;
        } else if let Some((k, v)) = self.kv.take() {
            let n = len.min(k.dim(2)?);
            self.kv = Some((k.narrow(2, 0, n)?, v.narrow(2, 0, n)?));
        }
        Ok(())
    }

    /// Bytes held by the cache.
    pub fn bytes(&self) -> usize {
        self.kv
            .as_ref()
            .map(|(k, v)| (k.elem_count() + v.elem_count()) * 4)
            .unwrap_or(0)
    }
}
