//! The KV cache of one layer: keys and values of the cached positions,
//! appended to and cut back to a shared prefix.
//!
//! The positions live in buffers with room to grow (`[1, kv_heads, cap,
//! head_dim]`, the capacity doubling when full), so appending a decoded
//! token writes one row per head instead of copying the whole cache; the
//! attention kernel reads the cached prefix in place through the strided
//! view [`KvCache::append`] returns.

use candle_core::{DType, Result, Tensor};

/// Keys and values of the positions seen so far.
#[derive(Default, Clone)]
pub struct KvCache {
    /// `[1, kv_heads, cap, head_dim]` buffers; positions `..len` are valid.
    buf: Option<(Tensor, Tensor)>,
    len: usize,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `k`, `v` (`[1, kv_heads, t, head_dim]`) and returns the
    /// cached keys and values, `[1, kv_heads, len, head_dim]` views of the
    /// buffers.
    pub fn append(&mut self, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let (b, heads, t, d) = k.dims4()?;
        let need = self.len + t;
        let cap = match &self.buf {
            Some((bk, _)) => bk.dim(2)?,
            None => 0,
        };
        if need > cap {
            let new_cap = if cap == 0 { need } else { need.max(2 * cap) };
            let zeros = || Tensor::zeros((b, heads, new_cap, d), DType::F32, k.device());
            let (nk, nv) = (zeros()?, zeros()?);
            if let (Some((ok, ov)), true) = (&self.buf, self.len > 0) {
                nk.slice_set(&ok.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                nv.slice_set(&ov.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
            }
            self.buf = Some((nk, nv));
        }
        let Some((bk, bv)) = &self.buf else {
            candle_core::bail!("kv cache: no buffer after growing");
        };
        bk.slice_set(&k.contiguous()?, 2, self.len)?;
        bv.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len = need;
        Ok((bk.narrow(2, 0, need)?, bv.narrow(2, 0, need)?))
    }

    /// Keeps the first `len` positions (all of the buffer is freed at 0).
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        self.len = len.min(self.len);
        if self.len == 0 {
            self.buf = None;
        }
        Ok(())
    }

    /// Bytes held by the cached positions (f32 keys and values).
    pub fn bytes(&self) -> usize {
        self.buf.as_ref().map_or(0, |(k, _)| {
            let dims = k.dims();
            2 * dims[1] * self.len * dims[3] * 4
        })
    }
}
