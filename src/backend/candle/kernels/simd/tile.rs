//! The interface of the 16-bit integer matmul's tile (`super::super::int16`
//! builds tiles and holds the scalar twin; [`super::avx512`] runs them):
//! the layout constants and the slices one kernel call reads.

/// Activations per scale.
pub const ACT_BLOCK: usize = 32;
/// Weight rows per panel (one 512-bit register of i32 lanes).
pub const PANEL: usize = 16;
/// Most tokens per tile of the kernel (its accumulators in registers).
pub const TILE: usize = 12;

/// One kernel call: one panel against every token, into `out[t ·
/// stride + col + r]` for the panel's first `valid` rows `r`.
pub struct Tile<'a> {
    pub k: usize,
    /// Weights per scale: 16 or 32.
    pub unit: usize,
    pub ints: &'a [i16],
    pub d: &'a [f32],
    /// Empty for types without offsets.
    pub m: &'a [f32],
    /// The tokens' rounded activations in `int16::Acts16`'s tiled layout,
    /// starting at a tile: `[tokens / TILE][k / 2][TILE][2]` (rounded up).
    pub xi: &'a [i16],
    /// `[tokens][k / 32]`.
    pub sx: &'a [f32],
    pub ss: &'a [f32],
    pub tokens: usize,
    pub stride: usize,
    pub col: usize,
    pub valid: usize,
}

impl Tile<'_> {
    /// Whether every slice has the length the kernels read and `out` (of
    /// `out_len` values) holds every value written: checked before any
    /// kernel runs (the SIMD kernel reads and writes without further checks).
    pub fn valid(&self, out_len: usize) -> bool {
        let k = self.k;
        (self.unit == 16 || self.unit == 32)
            && k > 0
            && k.is_multiple_of(ACT_BLOCK)
            && self.tokens > 0
            && (1..=PANEL).contains(&self.valid)
            && self.ints.len() == k * PANEL
            && self.d.len() == k / self.unit * PANEL
            && (self.m.is_empty() || (self.unit == 32 && self.m.len() == self.d.len()))
            && self.xi.len() == self.tokens.div_ceil(TILE) * TILE * k
            && self.sx.len() == self.tokens * k / ACT_BLOCK
            && self.ss.len() == self.sx.len()
            && self.col + self.valid <= self.stride
            && (self.tokens - 1)
                .checked_mul(self.stride)
                .and_then(|v| v.checked_add(self.col + self.valid))
                .is_some_and(|end| end <= out_len)
    }
}
