//! Measurement: resident memory ([`rss`]), energy from RAPL or a CPU-time
//! estimate ([`energy`]), GPU energy from NVML ([`gpu`]) and the machine's
//! fingerprint ([`environment`]).
//!
//! Invariant: measurement knows nothing of models, tasks or backends.

pub mod energy;
pub mod environment;
pub mod gpu;
pub mod rss;

pub use rss::*;

use std::path::Path;

/// Where Linux exposes RAPL's energy counters.
pub const POWERCAP_ROOT: &str = "/sys/class/powercap";

/// Measurement settings of a cell.
#[derive(Debug, Clone, Copy)]
pub struct MeasureOptions {
    /// Per-core power for the CPU-time energy estimate (W).
    pub cpu_watts: f64,
    /// Grid carbon intensity for CO2e (g/kWh).
    pub grid_g_per_kwh: f64,
    /// The powercap folder RAPL is read from.
    pub powercap_root: &'static str,
}

impl MeasureOptions {
    pub fn new(cpu_watts: f64, grid_g_per_kwh: f64) -> Self {
        Self {
            cpu_watts,
            grid_g_per_kwh,
            powercap_root: POWERCAP_ROOT,
        }
    }
}

/// Everything measured around one cell's scoring: the peak-RSS window
/// (with its sampled cross-check) and the CPU and GPU energy meters,
/// started together and read together.
pub struct CellProbe {
    rss_scope: RssScope,
    sampler: RssSampler,
    cpu: energy::EnergyMeter,
    gpu: gpu::GpuEnergyMeter,
}

/// What a [`CellProbe`] read.
pub struct CellMeasures {
    pub peak_rss: Option<PeakRss>,
    /// CPU energy (RAPL or the estimate); `None` when nothing was scored.
    pub energy: Option<energy::EnergyReading>,
    /// GPU energy from NVML, when a GPU meter is available.
    pub gpu_energy: Option<energy::EnergyReading>,
}

impl CellProbe {
    pub fn start(opts: &MeasureOptions) -> Self {
        Self {
            rss_scope: start_peak_window(),
            sampler: RssSampler::start(),
            cpu: energy::EnergyMeter::start(Path::new(opts.powercap_root), opts.cpu_watts),
            gpu: gpu::GpuEnergyMeter::start(),
        }
    }

    /// Stops the probe; `scored` says whether any document was scored
    /// (a cell entirely resumed has no energy of its own).
    pub fn finish(self, scored: bool) -> CellMeasures {
        let sampled = self.sampler.stop();
        let energy = scored.then(|| self.cpu.finish()).flatten();
        let gpu_energy = energy.as_ref().and_then(|_| self.gpu.finish());
        CellMeasures {
            peak_rss: peak_rss(self.rss_scope).map(|p| PeakRss {
                sampled_bytes: sampled,
                ..p
            }),
            energy,
            gpu_energy,
        }
    }
}
