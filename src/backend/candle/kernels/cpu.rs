//! Access to a CPU tensor's contiguous f32 data.

use candle_core::{Result, Tensor};

/// Runs `f` on the values of a contiguous f32 CPU tensor, in place.
pub(crate) fn with_rows<R>(x: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("expected a CPU tensor");
    };
    let Some((a, b)) = layout.contiguous_offsets() else {
        candle_core::bail!("expected a contiguous tensor");
    };
    f(&cpu.as_slice::<f32>()?[a..b])
}

/// Runs `f` on a `[1, heads, s, d]` f32 CPU tensor's values and its head
/// stride, reading in place when it is a prefix (along `s`) of a
/// contiguous buffer, as the KV cache hands its positions over; any other
/// layout is made contiguous first (head stride `s · d`).
pub(crate) fn with_heads<R>(x: &Tensor, f: impl FnOnce(&[f32], usize) -> Result<R>) -> Result<R> {
    let (_, heads, s, d) = x.dims4()?;
    let stride = x.layout().stride().to_vec();
    let strided_prefix = stride.len() == 4
        && stride[3] == 1
        && stride[2] == d
        && stride[1] >= s * d
        && (heads == 1 || stride[0] >= heads * stride[1]);
    if !strided_prefix || heads == 0 || s == 0 {
        return with_rows(x, |v| f(v, s * d));
    }
    let (storage, layout) = x.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("expected a CPU tensor");
    };
    let start = layout.start_offset();
    let len = (heads - 1) * stride[1] + s * d;
    f(&cpu.as_slice::<f32>()?[start..start + len], stride[1])
}
