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
