//! Compute threads: one rayon pool per process, sized once, with every
//! engine's own threads sized alike.

use anyhow::{Context, Result};

/// Runs `f` on a worker of a fresh pool of `n` rayon threads (after
/// [`crate::backend::set_threads`]). The caller's thread then takes part in the parallel
/// loops itself instead of handing each one to the pool and sleeping until
/// it is done: one thread runs them inline, with no wake-ups between the
/// hundreds of small matmuls of a decoded token.
pub(crate) fn in_pool<T: Send>(n: usize, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    crate::backend::set_threads(n);
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .context("cannot start the compute threads")?
        .install(f)
}

pub(crate) fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
