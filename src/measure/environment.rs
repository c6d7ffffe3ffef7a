//! The system fingerprint recorded with every run.

use serde::{Deserialize, Serialize};

/// Where and how the run happened.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Environment {
    pub slmbench_version: String,
    pub git_hash: String,
    pub build_profile: String,
    pub cpu: String,
    pub cores_logical: usize,
    pub threads: usize,
    pub os: String,
    pub total_memory_bytes: Option<u64>,
    /// `rustc --version` of the build.
    #[serde(default)]
    pub rustc: String,
    /// Versions of the crates that shape the numbers (candle, tokenizers, …).
    #[serde(default)]
    pub crate_versions: String,
    /// Instruction-set features detected at run time (avx2, fma, avx512f, …).
    #[serde(default)]
    pub isa_flags: Vec<String>,
    /// The local engine's kernel set and how it was chosen (`avx2
    /// (detected)`, `scalar (SLMBENCH_KERNELS)`); empty in older runs.
    #[serde(default)]
    pub kernels: String,
    /// Set when timings are not representative (e.g. a debug build).
    #[serde(default)]
    pub measurement_warning: Option<String>,
}

/// CPU model, core count, OS, memory and build facts.
pub fn fingerprint(threads: usize) -> Environment {
    let mut sys = sysinfo::System::new();
    sys.refresh_cpu_all();
    sys.refresh_memory();
    let cpu = sys
        .cpus()
        .first()
        .map(|c| c.brand().trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    let os = format!(
        "{} (kernel {})",
        sysinfo::System::long_os_version().unwrap_or_else(|| std::env::consts::OS.into()),
        sysinfo::System::kernel_version().unwrap_or_else(|| "?".into())
    );
    let build_profile: String = env!("SLMBENCH_BUILD_PROFILE").into();
    let measurement_warning = (build_profile == "debug")
        .then(|| "debug build: timings are not representative; build with --release".to_string());
    Environment {
        slmbench_version: env!("CARGO_PKG_VERSION").into(),
        git_hash: env!("SLMBENCH_GIT_HASH").into(),
        build_profile,
        rustc: env!("SLMBENCH_RUSTC_VERSION").into(),
        crate_versions: env!("SLMBENCH_CRATE_VERSIONS").into(),
        cpu,
        cores_logical: sys.cpus().len(),
        threads,
        os,
        total_memory_bytes: Some(sys.total_memory()).filter(|&m| m > 0),
        isa_flags: crate::measure::isa_flags(),
        kernels: String::new(),
        measurement_warning,
    }
}
