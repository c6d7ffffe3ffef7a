//! Energy measurement around a piece of work.
//!
//! [`EnergyMeter::start`] probes Linux RAPL through the powercap sysfs tree
//! (normally `/sys/class/powercap`) and, if usable, [`EnergyMeter::finish`]
//! reports the energy counted by the top-level *package* domains between the
//! two calls. RAPL counts the whole socket (every process on it), not only
//! this one. When RAPL is unusable (absent in VMs and containers, root-only
//! `energy_uj` since Linux 5.10 / CVE-2020-8694, unparsable values, ...) the
//! meter falls back to a CodeCarbon-style estimate, `joules = Δ(process
//! user+system CPU seconds) × watts per core`, and
//! [`EnergyMeter::fallback_reason`] says why RAPL was not used.
//! Unavailable values are `None`, never 0.

use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Default power drawn by one fully busy core, in watts, for the estimate.
///
/// Round figure from "TDP / core count" of common CPUs: Xeon Gold 6248 150 W / 20
/// cores = 7.5 W, EPYC 7763 280 W / 64 = 4.4 W, Core i7-12700K 125 W / 12 = 10.4 W,
/// Ryzen 7 5800X 105 W / 8 = 13.1 W; 10 W is in the upper half of that range.
pub const DEFAULT_CPU_WATTS_PER_CORE: f64 = 10.0;

/// Default grid carbon intensity in g per kWh: IEA world-average CO2 intensity of
/// power generation in 2018 (IEA Global Energy & CO2 Status Report, 2019), used as
/// a CO2e proxy. Pass a regional figure when it is known.
pub const DEFAULT_GRID_G_PER_KWH: f64 = 475.0;

/// Clock ticks per second used by `/proc/self/stat` (`USER_HZ`). Assumed to
/// be 100, which is what `sysconf(_SC_CLK_TCK)` returns on all mainstream
/// Linux architectures; reading it would need libc, which this crate avoids.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

const JOULES_PER_KWH: f64 = 3.6e6;

/// How an [`EnergyReading`] was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnergyMethod {
    /// Measured by RAPL package-domain counters.
    Rapl,
    /// Estimated from process CPU time × watts per core.
    Estimate,
    /// Measured by NVIDIA's NVML total-energy counter (GPU; see `gpu_energy`).
    Nvml,
}

/// Energy used between [`EnergyMeter::start`] and [`EnergyMeter::finish`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnergyReading {
    pub method: EnergyMethod,
    pub joules: f64,
    /// Human-readable statement of the method, e.g.
    /// `RAPL package domains package-0,package-1` or
    /// `estimated: CPU time 12.300 s × 10.0 W per core`.
    pub note: String,
}

#[derive(Debug, thiserror::Error)]
enum RaplError {
    #[error("powercap root {0} does not exist (no RAPL: VM, container or unsupported CPU/OS)")]
    RootAbsent(String),
    #[error("no top-level RAPL package domain (intel-rapl:N named package-*) under {0}")]
    NoPackages(String),
    #[error("permission denied reading {0} (energy_uj is root-only since Linux 5.10)")]
    PermissionDenied(String),
    #[error("cannot read {0}")]
    Read(String),
    #[error("unparsable value {0}")]
    Parse(String),
    #[error("inconsistent counter in {0}: start value exceeds max_energy_range_uj")]
    Inconsistent(String),
}

/// One top-level RAPL package domain and its counter value at start.
#[derive(Debug, Clone)]
struct RaplZone {
    name: String,
    energy_path: PathBuf,
    max_range_uj: u64,
    start_uj: u64,
}

/// Measures energy between [`EnergyMeter::start`] and [`EnergyMeter::finish`].
#[derive(Debug, Clone)]
pub struct EnergyMeter {
    watts_per_core: f64,
    cpu_start_s: Option<f64>,
    zones: Vec<RaplZone>, // empty when RAPL is not used
    fallback_reason: Option<String>,
}

impl EnergyMeter {
    /// Probes RAPL under `powercap_root` (normally /sys/class/powercap); falls back to the estimate.
    ///
    /// Counts only top-level `intel-rapl:N` zones whose `name` starts with `package`
    /// (AMD uses the same names). Nested `intel-rapl:N:M` subdomains (core, uncore,
    /// dram) are never summed; `intel-rapl-mmio:*` duplicates package-0 and is ignored.
    pub fn start(powercap_root: &Path, cpu_watts_per_core: f64) -> Self {
        // Recorded in every mode, so a RAPL failure at finish can fall back.
        let cpu_start_s = process_cpu_time_s();
        let (zones, fallback_reason) = match probe_rapl(powercap_root) {
            Ok(zones) => (zones, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        Self {
            watts_per_core: cpu_watts_per_core,
            cpu_start_s,
            zones,
            fallback_reason,
        }
    }

    /// Energy since [`EnergyMeter::start`]; `None` if it cannot be determined.
    ///
    /// If a RAPL counter cannot be read at finish, the estimate is returned
    /// and its note says why.
    pub fn finish(&self) -> Option<EnergyReading> {
        if self.zones.is_empty() {
            return self.estimate(None);
        }
        match rapl_delta_uj(&self.zones) {
            Ok(uj) => {
                let names: Vec<&str> = self.zones.iter().map(|z| z.name.as_str()).collect();
                let note = format!("RAPL package domains {}", names.join(","));
                Some(reading(EnergyMethod::Rapl, uj as f64 / 1e6, note)) // µJ -> J
            }
            Err(e) => self.estimate(Some(&format!("RAPL read failed at finish: {e}"))),
        }
    }

    /// The method [`EnergyMeter::finish`] will normally use.
    pub fn method(&self) -> EnergyMethod {
        if self.zones.is_empty() {
            EnergyMethod::Estimate
        } else {
            EnergyMethod::Rapl
        }
    }

    /// Why RAPL was not used (absent, permission denied, ...); `None` when it is used.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    fn estimate(&self, why: Option<&str>) -> Option<EnergyReading> {
        let w = self.watts_per_core;
        let cpu_s = process_cpu_time_s()? - self.cpu_start_s?;
        if !(w.is_finite() && w > 0.0 && cpu_s.is_finite() && cpu_s >= 0.0) {
            return None;
        }
        let why = why.map(|why| format!(" ({why})")).unwrap_or_default();
        let note = format!("estimated: CPU time {cpu_s:.3} s × {w:.1} W per core{why}");
        Some(reading(EnergyMethod::Estimate, cpu_s * w, note))
    }
}

fn reading(method: EnergyMethod, joules: f64, note: String) -> EnergyReading {
    EnergyReading {
        method,
        joules,
        note,
    }
}

/// User+system CPU time of this process (all threads) in seconds, from
/// `/proc/self/stat` fields 14 (utime) and 15 (stime), in clock ticks of
/// 1/100 s (see `CLOCK_TICKS_PER_SECOND`). `None` off Linux or on parse error.
pub fn process_cpu_time_s() -> Option<f64> {
    let stat = fs::read_to_string("/proc/self/stat").ok()?;
    parse_proc_stat_cpu_s(&stat)
}

/// Parses utime+stime out of a `/proc/<pid>/stat` line. The command name
/// (field 2) is in parentheses and may itself contain spaces and `)`, so
/// fields are counted after the *last* `)`.
fn parse_proc_stat_cpu_s(stat: &str) -> Option<f64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // Tokens after the comm start at field 3 (state); utime is field 14.
    let mut fields = after_comm.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / CLOCK_TICKS_PER_SECOND)
}

/// Grams of CO2-equivalent for `joules` at a grid intensity in gCO2e/kWh.
pub fn grams_co2e(joules: f64, grid_g_per_kwh: f64) -> f64 {
    joules / JOULES_PER_KWH * grid_g_per_kwh
}

/// `Some(N)` for a top-level zone directory name `intel-rapl:N`.
fn top_level_index(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("intel-rapl:")?;
    // Digits only: u32::from_str would also accept "+1" (and rejects "").
    let digits_only = rest.bytes().all(|b| b.is_ascii_digit());
    digits_only.then(|| rest.parse().ok()).flatten()
}

fn read_trimmed(path: &Path) -> Result<String, RaplError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text.trim().to_string()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            Err(RaplError::PermissionDenied(path.display().to_string()))
        }
        Err(e) => Err(RaplError::Read(format!("{}: {e}", path.display()))),
    }
}

fn read_u64(path: &Path) -> Result<u64, RaplError> {
    let value = read_trimmed(path)?;
    let err = || RaplError::Parse(format!("{value:?} in {}", path.display()));
    value.parse().map_err(|_| err())
}

fn probe_rapl(root: &Path) -> Result<Vec<RaplZone>, RaplError> {
    let root_str = root.display().to_string();
    if !root.is_dir() {
        return Err(RaplError::RootAbsent(root_str));
    }
    let list_err = |e| RaplError::Read(format!("{root_str}: {e}"));
    let mut dirs: Vec<(u32, PathBuf)> = Vec::new();
    for entry in fs::read_dir(root).map_err(list_err)? {
        let entry = entry.map_err(list_err)?;
        if let Some(idx) = entry.file_name().to_str().and_then(top_level_index) {
            dirs.push((idx, entry.path()));
        }
    }
    dirs.sort_by_key(|(idx, _)| *idx);
    let mut zones = Vec::new();
    for (_, dir) in dirs {
        let name = read_trimmed(&dir.join("name"))?;
        if !name.starts_with("package") {
            continue; // e.g. psys
        }
        let energy_path = dir.join("energy_uj");
        let start_uj = read_u64(&energy_path)?;
        let max_range_uj = read_u64(&dir.join("max_energy_range_uj"))?;
        zones.push(RaplZone {
            name,
            energy_path,
            max_range_uj,
            start_uj,
        });
    }
    if zones.is_empty() {
        return Err(RaplError::NoPackages(root_str));
    }
    Ok(zones)
}

/// Counter delta in µJ: if `end < start` the counter wrapped once at `max`
/// (max_energy_range_uj): delta = end + max - start. Multiple wraps are undetectable.
fn counter_delta(start: u64, end: u64, max: u64) -> Option<u64> {
    if end >= start {
        return Some(end - start);
    }
    max.checked_sub(start)?.checked_add(end)
}

/// Sum of the per-package counter deltas since start.
fn rapl_delta_uj(zones: &[RaplZone]) -> Result<u64, RaplError> {
    let mut total: u64 = 0;
    for z in zones {
        let end = read_u64(&z.energy_path)?;
        let delta = counter_delta(z.start_uj, end, z.max_range_uj)
            .ok_or_else(|| RaplError::Inconsistent(z.energy_path.display().to_string()))?;
        total = total.saturating_add(delta);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::time::{Duration, Instant};

    const MAX: u64 = 262_143_328_850;

    fn write(path: &Path, text: &str) {
        fs::write(path, format!("{text}\n")).expect("fake sysfs");
    }

    fn zone(dir: &Path, name: &str, energy: u64) {
        fs::create_dir_all(dir).expect("fake sysfs");
        write(&dir.join("name"), name);
        write(&dir.join("energy_uj"), &energy.to_string());
        write(&dir.join("max_energy_range_uj"), &MAX.to_string());
    }

    /// Two packages, nested core/dram subdomains (inside package-0 and as
    /// top-level symlinks, like the real sysfs), a psys zone, an mmio
    /// duplicate of package-0 and the bare `intel-rapl` control-type dir.
    /// package-1 starts 0.5 J below its wrap point.
    fn fake_tree() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        zone(&root.join("intel-rapl:0"), "package-0", 1_000_000);
        zone(&root.join("intel-rapl:0/intel-rapl:0:0"), "core", 500_000);
        zone(&root.join("intel-rapl:0/intel-rapl:0:1"), "dram", 700_000);
        for sub in ["intel-rapl:0:0", "intel-rapl:0:1"] {
            symlink(root.join("intel-rapl:0").join(sub), root.join(sub)).expect("fake sysfs");
        }
        zone(&root.join("intel-rapl:1"), "package-1", MAX - 500_000);
        zone(&root.join("intel-rapl:2"), "psys", 3_000_000);
        zone(&root.join("intel-rapl-mmio:0"), "package-0", 9_000_000);
        fs::create_dir_all(root.join("intel-rapl")).expect("fake sysfs");
        tmp
    }

    fn set(root: &Path, zone: &str, energy: u64) {
        write(&root.join(zone).join("energy_uj"), &energy.to_string());
    }

    #[test]
    fn rapl_counts_only_top_level_packages_and_handles_wraparound() {
        let tmp = fake_tree();
        let root = tmp.path();
        let meter = EnergyMeter::start(root, DEFAULT_CPU_WATTS_PER_CORE);
        assert_eq!(meter.method(), EnergyMethod::Rapl);
        assert_eq!(meter.fallback_reason(), None);
        // +2 J on package-0; package-1 wraps: 0.5 J + 1.5 J = +2 J. The large
        // changes in the other zones would show up if (wrongly) counted.
        set(root, "intel-rapl:0", 3_000_000);
        set(root, "intel-rapl:1", 1_500_000);
        set(root, "intel-rapl:0/intel-rapl:0:0", 90_000_000);
        set(root, "intel-rapl:0/intel-rapl:0:1", 80_000_000);
        set(root, "intel-rapl:2", 70_000_000);
        set(root, "intel-rapl-mmio:0", 60_000_000);
        let r = meter.finish().expect("reading");
        assert_eq!(r.method, EnergyMethod::Rapl);
        assert!((r.joules - 4.0).abs() < 1e-9, "joules {}", r.joules);
        assert_eq!(r.note, "RAPL package domains package-0,package-1");
        // A counter unreadable at finish: fall back to the estimate.
        write(&root.join("intel-rapl:1/energy_uj"), "garbage");
        let r = meter.finish().expect("reading");
        assert_eq!(r.method, EnergyMethod::Estimate);
        assert!(r.note.contains("RAPL read failed at finish"), "{}", r.note);
        assert_eq!(counter_delta(100, 250, 1000), Some(150));
        assert_eq!(counter_delta(900, 50, 1000), Some(150)); // 50 + 1000 - 900
        assert_eq!(counter_delta(2000, 50, 1000), None); // start above max
    }

    // Tests may run as root, where mode 000 does not block reads, so
    // unreadability is simulated with a directory where energy_uj should be
    // (read fails with EISDIR) and with a non-numeric value.
    fn corrupted_meter(corrupt: impl Fn(&Path)) -> EnergyMeter {
        let tmp = fake_tree();
        corrupt(&tmp.path().join("intel-rapl:1/energy_uj"));
        let meter = EnergyMeter::start(tmp.path(), 7.0);
        assert_eq!(meter.method(), EnergyMethod::Estimate);
        meter
    }

    #[test]
    fn unreadable_or_garbled_energy_falls_back_to_estimate() {
        let meter = corrupted_meter(|e| {
            fs::remove_file(e).expect("fake sysfs");
            fs::create_dir(e).expect("fake sysfs");
        });
        let why = meter.fallback_reason().expect("reason");
        assert!(why.starts_with("cannot read"), "{why}");
        let r = meter.finish().expect("reading");
        assert_eq!(r.method, EnergyMethod::Estimate);
        assert!(r.note.starts_with("estimated: CPU time ") && r.note.contains("× 7.0 W per core"));
        let meter = corrupted_meter(|e| write(e, "not-a-number"));
        let why = meter.fallback_reason().unwrap_or_default();
        assert!(why.contains("unparsable"), "{why}");
        let denied = RaplError::PermissionDenied("x/energy_uj".into()).to_string();
        assert!(denied.contains("root-only since Linux 5.10"), "{denied}");
    }

    #[test]
    fn absent_root_or_no_packages_uses_estimate() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let missing = tmp.path().join("missing");
        let meter = EnergyMeter::start(&missing, DEFAULT_CPU_WATTS_PER_CORE);
        assert_eq!(meter.method(), EnergyMethod::Estimate);
        let why = meter.fallback_reason().unwrap_or_default();
        assert!(why.contains("does not exist"), "{why}");
        let r = meter.finish().expect("reading");
        assert_eq!(r.method, EnergyMethod::Estimate);
        for w in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(EnergyMeter::start(&missing, w).finish(), None); // None, not 0
        }
        zone(&tmp.path().join("intel-rapl:0"), "psys", 1);
        let meter = EnergyMeter::start(tmp.path(), 1.0);
        let why = meter.fallback_reason().unwrap_or_default();
        assert!(why.contains("no top-level RAPL package"), "{why}");
    }

    // Spins until the process used 0.3 s more CPU, so joules >= 0.3 × W by
    // construction. Upper bounds: CPU time read just before start / after
    // finish brackets the meter's; CPU time <= wall × available CPUs. No
    // 0.5×..2× wall bound: parallel tests in this process may burn CPU too,
    // and an oversubscribed machine gives the spinner less than wall time.
    #[test]
    fn estimate_tracks_busy_loop_cpu_time() {
        let w = DEFAULT_CPU_WATTS_PER_CORE;
        let tmp = tempfile::tempdir().expect("tempdir");
        let (wall, before) = (Instant::now(), process_cpu_time_s().expect("cpu time"));
        let meter = EnergyMeter::start(&tmp.path().join("missing"), w);
        let c0 = process_cpu_time_s().expect("cpu time");
        let mut x: u64 = 0;
        while process_cpu_time_s().expect("cpu time") - c0 < 0.3 {
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            assert!(wall.elapsed() < Duration::from_secs(30), "no CPU time");
        }
        let r = meter.finish().expect("reading");
        let after = process_cpu_time_s().expect("cpu time");
        let wall_s = wall.elapsed().as_secs_f64();
        assert_eq!(r.method, EnergyMethod::Estimate);
        assert!(r.joules >= 0.3 * w - 1e-9, "joules {}", r.joules);
        let bracket = (after - before) * w;
        assert!(
            r.joules <= bracket + 1e-9,
            "joules {} > {bracket}",
            r.joules
        );
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        assert!(r.joules <= (cpus * wall_s + 0.02) * w, "wall {wall_s} s");
    }

    #[test]
    fn proc_stat_co2_serde_and_zone_names() {
        // comm with spaces and a ')' inside; utime=250, stime=50 ticks.
        let line = "42 (we ird) name) R 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(parse_proc_stat_cpu_s(line), Some(3.0));
        assert_eq!(parse_proc_stat_cpu_s("42 (x) R 1 2"), None);
        assert_eq!(parse_proc_stat_cpu_s("garbage"), None);
        #[cfg(target_os = "linux")]
        assert!(process_cpu_time_s().is_some());
        assert!((grams_co2e(JOULES_PER_KWH, DEFAULT_GRID_G_PER_KWH) - 475.0).abs() < 1e-9);
        let json = r#"{"method":"rapl","joules":1.5,"note":"n"}"#;
        let r: EnergyReading = serde_json::from_str(json).expect("json");
        assert_eq!((r.method, r.joules), (EnergyMethod::Rapl, 1.5));
        assert_eq!(serde_json::to_string(&r).expect("json"), json);
        let est = serde_json::to_string(&EnergyMethod::Estimate).expect("json");
        assert_eq!(est, r#""estimate""#);
        assert_eq!(top_level_index("intel-rapl:12"), Some(12));
        for n in ["intel-rapl:0:1", "intel-rapl", "intel-rapl-mmio:0"] {
            assert_eq!(top_level_index(n), None, "{n}");
        }
    }
}
