//! NVIDIA GPU energy from NVML's total-energy counter
//! (`nvmlDeviceGetTotalEnergyConsumption`, millijoules since the driver
//! loaded; Volta and newer). Compiled in with the `nvml` cargo feature; the
//! library is loaded at run time, so a machine without an NVIDIA driver gets
//! an unavailable meter and a reason, never an error.
//!
//! The counter covers the whole GPU (every process on it), like RAPL does
//! for the CPU package. The candle backend computes on the CPU, so on a GPU
//! machine this measures the GPU's idle draw during the cell.

use crate::measure::energy::EnergyReading;

/// GPU energy between [`GpuEnergyMeter::start`] and [`GpuEnergyMeter::finish`].
pub struct GpuEnergyMeter {
    state: State,
}

enum State {
    Unavailable(String),
    #[cfg(feature = "nvml")]
    Active {
        nvml: Box<nvml_wrapper::Nvml>,
        /// (device index, counter at start in mJ)
        start_mj: Vec<(u32, u64)>,
    },
}

impl GpuEnergyMeter {
    /// Probes NVML (when compiled in) and reads every GPU's counter.
    pub fn start() -> Self {
        Self { state: probe() }
    }

    /// Joules used by all GPUs since `start`; `None` when unavailable.
    pub fn finish(&self) -> Option<EnergyReading> {
        match &self.state {
            State::Unavailable(_) => None,
            #[cfg(feature = "nvml")]
            State::Active { nvml, start_mj } => {
                let mut mj = 0u64;
                for (i, start) in start_mj {
                    let now = nvml
                        .device_by_index(*i)
                        .and_then(|d| d.total_energy_consumption())
                        .ok()?;
                    mj += now.saturating_sub(*start);
                }
                let ids: Vec<String> = start_mj.iter().map(|(i, _)| i.to_string()).collect();
                Some(EnergyReading {
                    method: crate::measure::energy::EnergyMethod::Nvml,
                    joules: mj as f64 / 1e3,
                    note: format!("NVML total energy of GPU {}", ids.join(",")),
                })
            }
        }
    }

    /// Why there is no GPU reading; `None` when NVML is in use.
    pub fn unavailable_reason(&self) -> Option<&str> {
        match &self.state {
            State::Unavailable(r) => Some(r),
            #[cfg(feature = "nvml")]
            State::Active { .. } => None,
        }
    }
}

#[cfg(not(feature = "nvml"))]
fn probe() -> State {
    State::Unavailable("built without the `nvml` feature".into())
}

#[cfg(feature = "nvml")]
fn probe() -> State {
    let nvml = match nvml_wrapper::Nvml::init() {
        Ok(n) => n,
        Err(e) => return State::Unavailable(format!("NVML unavailable: {e}")),
    };
    let count = match nvml.device_count() {
        Ok(0) => return State::Unavailable("NVML found no GPU".into()),
        Ok(c) => c,
        Err(e) => return State::Unavailable(format!("NVML device count: {e}")),
    };
    let mut start_mj = Vec::new();
    for i in 0..count {
        match nvml
            .device_by_index(i)
            .and_then(|d| d.total_energy_consumption())
        {
            Ok(mj) => start_mj.push((i, mj)),
            Err(e) => {
                return State::Unavailable(format!(
                    "NVML GPU {i}: no total-energy counter ({e}; needs Volta or newer)"
                ))
            }
        }
    }
    State::Active {
        nvml: Box::new(nvml),
        start_mj,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::energy::EnergyMethod;

    /// This machine has no NVIDIA driver: the probe must say why, not fail.
    #[test]
    fn probe_without_a_driver_is_unavailable_with_a_reason() {
        let m = GpuEnergyMeter::start();
        if m.unavailable_reason().is_none() {
            // A real GPU: the counter only grows.
            let r = m.finish().expect("reading");
            assert!(r.joules >= 0.0 && r.method == EnergyMethod::Nvml);
            return;
        }
        assert!(m.finish().is_none());
        let why = m.unavailable_reason().unwrap_or_default();
        if cfg!(feature = "nvml") {
            assert!(why.contains("NVML"), "{why}");
        } else {
            assert!(why.contains("nvml"), "{why}");
        }
    }
}
