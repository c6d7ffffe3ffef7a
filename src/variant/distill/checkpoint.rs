//! Training checkpoints: every K steps the student's weights, the
//! optimizer's moments and the run's counters go to
//! `<dir>/ckpt-NNNNNN/` (`state.safetensors` + `state.json`), written under
//! a temporary name and renamed, so a kill at any moment leaves the last
//! complete checkpoint. A checkpoint belongs to one variant key; another
//! key's is ignored (and replaced).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// The counters saved next to the tensors.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Counters {
    /// The variant's cache key (a checkpoint of other inputs is not resumed).
    pub key: String,
    pub losses: Vec<f64>,
    pub tokens_seen: usize,
    /// Training wall time so far, over every process that worked on it.
    pub wall_time_s: f64,
    /// Energy so far (J), when measured.
    pub energy_j: Option<f64>,
    pub energy_note: Option<String>,
    /// Held-out KL of the student before training.
    pub held_out_kl_before: Option<f64>,
}

/// A checkpoint read back.
pub struct Saved {
    pub counters: Counters,
    pub weights: Vec<Tensor>,
    pub moments: Vec<(Tensor, Tensor)>,
}

fn io(path: &Path, e: impl std::fmt::Display) -> String {
    format!("{}: {e}", path.display())
}

fn complete(dir: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(usize, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let n = name.strip_prefix("ckpt-")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Writes step `counters.losses.len()`'s checkpoint and removes older ones.
pub fn save(
    dir: &Path,
    counters: &Counters,
    weights: &[Tensor],
    moments: &[(Tensor, Tensor)],
) -> Result<PathBuf, String> {
    let step = counters.losses.len();
    let fin = dir.join(format!("ckpt-{step:06}"));
    let tmp = dir.join(format!("partial-{step:06}-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    let mut map: HashMap<String, Tensor> = HashMap::new();
    for (i, w) in weights.iter().enumerate() {
        map.insert(format!("w.{i}"), w.clone());
    }
    for (i, (m, v)) in moments.iter().enumerate() {
        map.insert(format!("m.{i}"), m.clone());
        map.insert(format!("v.{i}"), v.clone());
    }
    let st = tmp.join("state.safetensors");
    candle_core::safetensors::save(&map, &st).map_err(|e| io(&st, e))?;
    let js = tmp.join("state.json");
    let text = serde_json::to_string_pretty(counters).map_err(|e| io(&js, e))?;
    std::fs::write(&js, text).map_err(|e| io(&js, e))?;
    if fin.exists() {
        std::fs::remove_dir_all(&fin).map_err(|e| io(&fin, e))?;
    }
    std::fs::rename(&tmp, &fin).map_err(|e| io(&fin, e))?;
    for (n, p) in complete(dir) {
        if n != step {
            let _ = std::fs::remove_dir_all(p);
        }
    }
    Ok(fin)
}

/// The newest checkpoint under `dir` made for `key`, if any.
pub fn load(dir: &Path, key: &str, n_vars: usize) -> Result<Option<Saved>, String> {
    let Some((_, path)) = complete(dir).pop() else {
        return Ok(None);
    };
    let js = path.join("state.json");
    let text = std::fs::read_to_string(&js).map_err(|e| io(&js, e))?;
    let counters: Counters = serde_json::from_str(&text).map_err(|e| {
        io(
            &js,
            format!("not a checkpoint ({e}); delete the folder to start over"),
        )
    })?;
    if counters.key != key {
        return Ok(None);
    }
    let st = path.join("state.safetensors");
    let mut map = candle_core::safetensors::load(&st, &Device::Cpu).map_err(|e| io(&st, e))?;
    let mut take = |k: String| {
        map.remove(&k).ok_or_else(|| {
            io(
                &st,
                format!("tensor {k} is missing; delete the folder to start over"),
            )
        })
    };
    let mut weights = Vec::with_capacity(n_vars);
    let mut moments = Vec::with_capacity(n_vars);
    for i in 0..n_vars {
        weights.push(take(format!("w.{i}"))?);
        moments.push((take(format!("m.{i}"))?, take(format!("v.{i}"))?));
    }
    Ok(Some(Saved {
        counters,
        weights,
        moments,
    }))
}
