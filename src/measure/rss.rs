//! Process measurements taken around each cell: peak resident memory from
//! the kernel's high-water mark (`VmHWM`), reset per cell where Linux allows.
//!
//! Unavailable measurements are `None`, never 0.

use serde::{Deserialize, Serialize};

/// Peak resident set size and what it covers.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeakRss {
    pub bytes: u64,
    /// `cell` when the high-water mark was reset before the cell, else `process`.
    pub scope: RssScope,
    /// Largest RSS seen by a sampling thread over the same window (every
    /// [`SAMPLE_INTERVAL`]): a cross-check that is ≤ `bytes` (up to the
    /// kernel's batched per-thread RSS counters, a few dozen pages) and close
    /// to it when the peak lasted longer than one interval.
    #[serde(default)]
    pub sampled_bytes: Option<u64>,
}

/// How often [`RssSampler`] reads the resident set size.
pub const SAMPLE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// A thread that samples this process's RSS until [`RssSampler::stop`].
pub struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<Option<u64>>>,
}

impl RssSampler {
    pub fn start() -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("rss-sampler".into())
            .spawn(move || {
                let mut max = rss_bytes();
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(SAMPLE_INTERVAL);
                    max = max.max(rss_bytes());
                }
                max
            })
            .ok();
        Self { stop, handle }
    }

    /// Stops the thread; the largest RSS it saw (`None` off Linux).
    pub fn stop(mut self) -> Option<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.take().and_then(|h| h.join().ok()).flatten()
    }
}

impl Drop for RssSampler {
    /// An early return (an error mid-cell) still ends the thread.
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RssScope {
    Cell,
    Process,
}

/// A `/proc/self/status` field in kB, as bytes.
fn status_kb(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kb| kb * 1024)
}

/// Current resident set size.
pub fn rss_bytes() -> Option<u64> {
    status_kb("VmRSS:")
}

/// Starts a peak-RSS window: resets the kernel's high-water mark to the
/// current RSS (writing 5 to `/proc/self/clear_refs`, Linux ≥ 4.0).
pub fn start_peak_window() -> RssScope {
    match std::fs::write("/proc/self/clear_refs", "5") {
        Ok(()) => RssScope::Cell,
        Err(_) => RssScope::Process,
    }
}

/// The peak RSS since [`start_peak_window`] (or since the process started).
pub fn peak_rss(scope: RssScope) -> Option<PeakRss> {
    status_kb("VmHWM:").map(|bytes| PeakRss {
        bytes,
        scope,
        sampled_bytes: None,
    })
}

/// Instruction-set features that matter for CPU inference speed.
pub fn isa_flags() -> Vec<String> {
    #[allow(unused_mut)]
    let mut flags: Vec<String> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => {
                $(if std::arch::is_x86_feature_detected!($f) { flags.push($f.to_string()); })*
            };
        }
        probe!(
            "sse4.2",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vnni",
            "avx512bf16"
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            flags.push("neon".into());
        }
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rss_sees_a_known_allocation() {
        if rss_bytes().is_none() {
            return; // not Linux
        }
        let scope = start_peak_window();
        let before = peak_rss(scope).expect("peak").bytes;
        let block = vec![1u8; 64 << 20];
        std::hint::black_box(&block);
        let after = peak_rss(scope).expect("peak").bytes;
        drop(block);
        // At least the 64 MiB just touched (other test threads may add more).
        assert!(after >= before + (60 << 20), "{before} -> {after}");
    }
}
