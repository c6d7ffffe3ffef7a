//! `slmbench bench`: llama-bench-style throughput — prompt processing (pp:
//! one forward over P prompt tokens) and text generation (tg: N greedy
//! decode steps with the KV cache) — as mean ± sd over repetitions, for
//! every combination of prompt sizes, generation lengths and thread counts.
//!
//! Each thread count runs in a child process (`slmbench bench --worker`), so
//! the thread pools are sized once and measurements do not share a heap.
//! The timing itself is the backend's ([`Throughput`]); a backend without it
//! has no `bench`.

use serde::{Deserialize, Serialize};

use crate::backend::{ScoreError, Throughput};

/// One measured test of one configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BenchRow {
    pub model: String,
    pub model_file: String,
    pub architecture: String,
    /// Most common GGML type of the weight matrices (e.g. `Q4_1`).
    pub quant_type: String,
    pub dtype: String,
    pub threads: usize,
    /// `pp512` or `tg128`.
    pub test: String,
    pub n_tokens: usize,
    pub repetitions: usize,
    pub tokens_per_s_mean: f64,
    pub tokens_per_s_sd: Option<f64>,
    /// pp: time to process the prompt and produce the first token's logits.
    pub ttft_ms_mean: Option<f64>,
    pub cpu: String,
    pub isa_flags: String,
    /// The kernel set and how it was chosen (see `SLMBENCH_KERNELS`).
    #[serde(default)]
    pub kernels: String,
    pub slmbench_version: String,
    pub git_hash: String,
    pub build_profile: String,
}

/// Deterministic pseudo-random prompt ids in `[10, vocab)` (llama-bench also
/// uses random tokens; content does not change the cost).
pub fn prompt_tokens(n: usize, vocab: usize) -> Vec<u32> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (10 + x % (vocab.max(11) as u64 - 10)) as u32
        })
        .collect()
}

fn mean_sd(xs: &[f64]) -> (f64, Option<f64>) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let sd = (xs.len() > 1)
        .then(|| (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
    (mean, sd)
}

/// What the rows share about the model and machine.
pub struct RowContext {
    pub model: String,
    pub model_file: String,
    pub architecture: String,
    pub quant_type: String,
    pub dtype: String,
    pub threads: usize,
}

/// Runs the pp and tg tests on a loaded model (one warm-up run each first).
pub fn run_tests(
    model: &mut dyn Throughput,
    ctx: &RowContext,
    prompts: &[usize],
    gens: &[usize],
    reps: usize,
) -> Result<Vec<BenchRow>, ScoreError> {
    let env = crate::measure::environment::fingerprint(ctx.threads);
    let vocab = model.vocab();
    let row = |test: String, n: usize, tps: &[f64], ttft: Option<f64>| BenchRow {
        model: ctx.model.clone(),
        model_file: ctx.model_file.clone(),
        architecture: ctx.architecture.clone(),
        quant_type: ctx.quant_type.clone(),
        dtype: ctx.dtype.clone(),
        threads: ctx.threads,
        test,
        n_tokens: n,
        repetitions: tps.len(),
        tokens_per_s_mean: mean_sd(tps).0,
        tokens_per_s_sd: mean_sd(tps).1,
        ttft_ms_mean: ttft,
        cpu: env.cpu.clone(),
        isa_flags: env.isa_flags.join(" "),
        kernels: crate::backend::kernels(),
        slmbench_version: env.slmbench_version.clone(),
        git_hash: env.git_hash.clone(),
        build_profile: env.build_profile.clone(),
    };
    let mut rows = Vec::new();
    for &p in prompts.iter().filter(|&&p| p > 0) {
        let prompt = prompt_tokens(p, vocab);
        model.time_pp(&prompt)?;
        let secs: Vec<f64> = (0..reps)
            .map(|_| model.time_pp(&prompt))
            .collect::<Result<_, ScoreError>>()?;
        let tps: Vec<f64> = secs.iter().map(|s| p as f64 / s).collect();
        let ttft = mean_sd(&secs).0 * 1e3;
        rows.push(row(format!("pp{p}"), p, &tps, Some(ttft)));
    }
    for &n in gens.iter().filter(|&&n| n > 0) {
        let first = prompt_tokens(1, vocab)[0];
        model.time_tg(first, n.min(4))?;
        let tps: Vec<f64> = (0..reps)
            .map(|_| model.time_tg(first, n).map(|(s, _)| n as f64 / s))
            .collect::<Result<_, ScoreError>>()?;
        rows.push(row(format!("tg{n}"), n, &tps, None));
    }
    Ok(rows)
}

/// Output formats of `bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchFormat {
    Table,
    Md,
    Csv,
    Json,
}

fn sd_text(r: &BenchRow) -> String {
    r.tokens_per_s_sd
        .map_or("n/a".into(), |s| format!("{s:.2}"))
}

/// Renders rows in the chosen format.
pub fn render(rows: &[BenchRow], format: BenchFormat) -> String {
    match format {
        BenchFormat::Json => serde_json::to_string_pretty(rows).unwrap_or_default() + "\n",
        BenchFormat::Csv => {
            let mut s = String::from("model,model_file,architecture,quant_type,dtype,threads,test,n_tokens,repetitions,tokens_per_s_mean,tokens_per_s_sd,ttft_ms_mean,cpu,isa_flags,kernels,slmbench_version,git_hash,build_profile\n");
            for r in rows {
                s.push_str(&format!(
                    "{},{},{},{},{},{},{},{},{},{:.3},{},{},\"{}\",{},\"{}\",{},{},{}\n",
                    r.model,
                    r.model_file,
                    r.architecture,
                    r.quant_type,
                    r.dtype,
                    r.threads,
                    r.test,
                    r.n_tokens,
                    r.repetitions,
                    r.tokens_per_s_mean,
                    r.tokens_per_s_sd
                        .map(|x| format!("{x:.3}"))
                        .unwrap_or_default(),
                    r.ttft_ms_mean
                        .map(|x| format!("{x:.3}"))
                        .unwrap_or_default(),
                    r.cpu.replace('"', "'"),
                    r.isa_flags,
                    r.kernels,
                    r.slmbench_version,
                    r.git_hash,
                    r.build_profile
                ));
            }
            s
        }
        BenchFormat::Table | BenchFormat::Md => {
            let mut s = String::from(
                "| model | quant | dtype | threads | test | t/s | ttft ms |\n|---|---|---|---:|---|---:|---:|\n",
            );
            for r in rows {
                s.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {:.2} ± {} | {} |\n",
                    r.model,
                    r.quant_type,
                    r.dtype,
                    r.threads,
                    r.test,
                    r.tokens_per_s_mean,
                    sd_text(r),
                    r.ttft_ms_mean.map_or("n/a".into(), |t| format!("{t:.1}")),
                ));
            }
            if let Some(r) = rows.first() {
                s.push_str(&format!(
                    "\n{} ({}; kernels {}), slmbench {} {} ({} build); mean ± sd over {} repetitions after a warm-up run\n",
                    r.cpu, r.isa_flags, r.kernels, r.slmbench_version, r.git_hash, r.build_profile, r.repetitions
                ));
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_tokens_are_deterministic_and_in_range() {
        let a = prompt_tokens(100, 50);
        assert_eq!(a, prompt_tokens(100, 50));
        assert!(a.iter().all(|&t| (10..50).contains(&t)));
    }

    #[test]
    fn mean_and_sd() {
        let (m, sd) = mean_sd(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12);
        assert!((sd.expect("sd") - 1.0).abs() < 1e-12);
        assert_eq!(mean_sd(&[5.0]).1, None);
    }
}
