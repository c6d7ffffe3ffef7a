//! Multiple-choice metrics as lm-evaluation-harness 0.4.13 computes them:
//! per-sample scoring from per-choice log-likelihoods (`acc`, `acc_norm`,
//! and the (gold, pred) pairs behind `f1` and `mcc`) and their aggregation
//! with standard errors (closed form for means, bootstrap for f1/mcc).
//!
//! Invariant: pure. No I/O, no model, no task templates; the only dependency
//! is the CPython-compatible RNG used to reproduce lm-eval's bootstrap draws.

use std::fmt;
use std::str::FromStr;

use crate::pyrandom::PyRandom;

/// A metric named in a task's `metric_list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// `acc`: the highest log-likelihood choice is the gold one.
    Acc,
    /// `acc_norm`: as `acc`, with log-likelihoods divided by the choice's length in characters.
    AccNorm,
    /// `f1`: binary F1 (positive label 1) over (gold, pred) pairs.
    F1,
    /// `mcc`: Matthews correlation coefficient over (gold, pred) pairs.
    Mcc,
}

impl Metric {
    /// All supported metrics.
    pub const ALL: [Metric; 4] = [Metric::Acc, Metric::AccNorm, Metric::F1, Metric::Mcc];

    /// The lm-eval name (`acc`, `acc_norm`, `f1`, `mcc`).
    pub fn name(self) -> &'static str {
        match self {
            Metric::Acc => "acc",
            Metric::AccNorm => "acc_norm",
            Metric::F1 => "f1",
            Metric::Mcc => "mcc",
        }
    }

    /// The lm-eval aggregation name (`mean`, `f1`, `matthews_corrcoef`).
    pub fn aggregation_name(self) -> &'static str {
        match self {
            Metric::Acc | Metric::AccNorm => "mean",
            Metric::F1 => "f1",
            Metric::Mcc => "matthews_corrcoef",
        }
    }

    /// Whether a higher value is better (true for all supported metrics).
    pub fn higher_is_better(self) -> bool {
        true
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Metric {
    type Err = MetricError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Metric::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| MetricError::UnknownMetric(s.to_string()))
    }
}

/// Errors from scoring and aggregation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricError {
    /// A metric name that is not supported.
    #[error("unknown metric `{0}` — use one of acc, acc_norm, f1, mcc")]
    UnknownMetric(String),
    /// Inputs of a sample disagree in length or are empty.
    #[error("{0} — pass one log-likelihood and one length per choice")]
    BadSample(String),
    /// Aggregation over no samples.
    #[error("no samples to aggregate for {0} — score at least one document")]
    Empty(Metric),
    /// Labels that binary F1 cannot handle.
    #[error("f1 needs binary labels 0/1, found {0} — use acc or mcc for multi-class tasks")]
    NotBinary(String),
}

/// The per-sample outcome from which every metric is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleScore {
    /// Index of the gold choice.
    pub gold: usize,
    /// Index of the highest log-likelihood (first one on ties, like `numpy.argmax`).
    pub pred: usize,
    /// Index of the highest log-likelihood per character of the choice.
    pub pred_norm: usize,
}

impl SampleScore {
    /// `acc` for this sample: 1.0 or 0.0.
    pub fn acc(&self) -> f64 {
        if self.pred == self.gold {
            1.0
        } else {
            0.0
        }
    }

    /// `acc_norm` for this sample: 1.0 or 0.0.
    pub fn acc_norm(&self) -> f64 {
        if self.pred_norm == self.gold {
            1.0
        } else {
            0.0
        }
    }
}

/// `numpy.argmax`: index of the first maximum; a NaN counts as the maximum
/// (the first NaN wins). `None` for an empty slice.
pub fn argmax(values: &[f64]) -> Option<usize> {
    if let Some(i) = values.iter().position(|v| v.is_nan()) {
        return Some(i);
    }
    let mut best: Option<(usize, f64)> = None;
    for (i, &v) in values.iter().enumerate() {
        match best {
            Some((_, b)) if v <= b => {}
            _ => best = Some((i, v)),
        }
    }
    best.map(|(i, _)| i)
}

/// Scores one document from its per-choice log-likelihoods.
///
/// `choice_chars[i]` is the length in characters (Unicode scalar values, as
/// Python's `len`) of choice `i` as `doc_to_choice` returns it, without the
/// target delimiter; lm-eval divides by that length for `acc_norm`.
pub fn score_sample(
    lls: &[f64],
    choice_chars: &[usize],
    gold: usize,
) -> Result<SampleScore, MetricError> {
    if lls.is_empty() || lls.len() != choice_chars.len() {
        return Err(MetricError::BadSample(format!(
            "{} log-likelihoods for {} choice lengths",
            lls.len(),
            choice_chars.len()
        )));
    }
    if gold >= lls.len() {
        return Err(MetricError::BadSample(format!(
            "gold index {gold} out of range for {} choices",
            lls.len()
        )));
    }
    let normed: Vec<f64> = lls
        .iter()
        .zip(choice_chars)
        .map(|(&ll, &len)| ll / len as f64)
        .collect();
    let pred = argmax(lls).unwrap_or(0);
    let pred_norm = argmax(&normed).unwrap_or(0);
    Ok(SampleScore {
        gold,
        pred,
        pred_norm,
    })
}

/// An aggregation over (gold, pred) pairs.
type PairMetric = fn(&[(usize, usize)]) -> Result<f64, MetricError>;

/// Options for [`aggregate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AggregateOptions {
    /// Bootstrap replicates for the stderr of f1/mcc (lm-eval draws them in
    /// chunks of up to 1000, chunk `i` seeded with `i`). 0 disables those stderrs.
    pub bootstrap_iters: usize,
}

impl Default for AggregateOptions {
    fn default() -> Self {
        AggregateOptions {
            bootstrap_iters: 1000,
        }
    }
}

/// An aggregated metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aggregate {
    /// The metric.
    pub metric: Metric,
    /// Its value over all samples.
    pub value: f64,
    /// Its standard error; `None` where lm-eval reports "N/A" (one sample, or no bootstrap).
    pub stderr: Option<f64>,
    /// Number of samples.
    pub n: usize,
}

/// Aggregates one metric over all samples of a task, as lm-eval does.
pub fn aggregate(
    metric: Metric,
    samples: &[SampleScore],
    opts: &AggregateOptions,
) -> Result<Aggregate, MetricError> {
    if samples.is_empty() {
        return Err(MetricError::Empty(metric));
    }
    let n = samples.len();
    let (value, stderr) = match metric {
        Metric::Acc | Metric::AccNorm => {
            let xs: Vec<f64> = samples
                .iter()
                .map(|s| {
                    if metric == Metric::Acc {
                        s.acc()
                    } else {
                        s.acc_norm()
                    }
                })
                .collect();
            (mean(&xs), if n > 1 { mean_stderr(&xs) } else { None })
        }
        Metric::F1 | Metric::Mcc => {
            let pairs: Vec<(usize, usize)> = samples.iter().map(|s| (s.gold, s.pred)).collect();
            let f: PairMetric = if metric == Metric::F1 {
                f1_score
            } else {
                |p| Ok(matthews_corrcoef(p))
            };
            let value = f(&pairs)?;
            let stderr = if n > 1 {
                bootstrap_stderr(|p| f(p).unwrap_or(f64::NAN), &pairs, opts.bootstrap_iters)
            } else {
                None
            };
            (value, stderr)
        }
    };
    Ok(Aggregate {
        metric,
        value,
        stderr,
        n,
    })
}

/// Python's `sum` of floats, left to right. (Python 3.12+ compensates the
/// sum; the reference results were produced by an earlier Python, whose plain
/// summation this reproduces bit for bit. The two differ only in the last bits.)
fn py_sum(xs: impl IntoIterator<Item = f64>) -> f64 {
    xs.into_iter().fold(0.0, |acc, x| acc + x)
}

/// lm-eval's `mean`: `sum(xs) / len(xs)` (NaN for an empty slice).
pub fn mean(xs: &[f64]) -> f64 {
    py_sum(xs.iter().copied()) / xs.len() as f64
}

/// lm-eval's `sample_stddev` (ddof = 1); `None` for fewer than 2 values.
pub fn sample_stddev(xs: &[f64]) -> Option<f64> {
    if xs.len() < 2 {
        return None;
    }
    let mu = mean(xs);
    Some((py_sum(xs.iter().map(|x| (x - mu).powi(2))) / (xs.len() - 1) as f64).sqrt())
}

/// lm-eval's `mean_stderr`: sample stddev / sqrt(n); `None` for fewer than 2 values.
pub fn mean_stderr(xs: &[f64]) -> Option<f64> {
    sample_stddev(xs).map(|s| s / (xs.len() as f64).sqrt())
}

/// scikit-learn's `f1_score(golds, preds)` (average="binary", pos_label=1)
/// over (gold, pred) pairs; 0.0 when there are no true or predicted positives.
pub fn f1_score(pairs: &[(usize, usize)]) -> Result<f64, MetricError> {
    let mut labels: Vec<usize> = pairs.iter().flat_map(|&(g, p)| [g, p]).collect();
    labels.sort_unstable();
    labels.dedup();
    if labels.len() > 2 || (labels.len() == 2 && !labels.contains(&1)) {
        return Err(MetricError::NotBinary(format!("{labels:?}")));
    }
    let (mut tp, mut true_pos, mut pred_pos) = (0u64, 0u64, 0u64);
    for &(g, p) in pairs {
        tp += u64::from(g == 1 && p == 1);
        true_pos += u64::from(g == 1);
        pred_pos += u64::from(p == 1);
    }
    let denom = (true_pos + pred_pos) as f64;
    Ok(if denom == 0.0 {
        0.0
    } else {
        2.0 * tp as f64 / denom
    })
}

/// scikit-learn's `matthews_corrcoef(golds, preds)` over (gold, pred) pairs
/// (multi-class form); 0.0 where it is undefined.
pub fn matthews_corrcoef(pairs: &[(usize, usize)]) -> f64 {
    let mut labels: Vec<usize> = pairs.iter().flat_map(|&(g, p)| [g, p]).collect();
    labels.sort_unstable();
    labels.dedup();
    let k = labels.len();
    let index = |v: usize| labels.binary_search(&v).unwrap_or(0);
    let mut t_sum = vec![0.0f64; k];
    let mut p_sum = vec![0.0f64; k];
    let mut n_correct = 0.0f64;
    for &(g, p) in pairs {
        t_sum[index(g)] += 1.0;
        p_sum[index(p)] += 1.0;
        if g == p {
            n_correct += 1.0;
        }
    }
    let n_samples: f64 = p_sum.iter().sum();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let cov_ytyp = n_correct * n_samples - dot(&t_sum, &p_sum);
    let cov_ypyp = n_samples * n_samples - dot(&p_sum, &p_sum);
    let cov_ytyt = n_samples * n_samples - dot(&t_sum, &t_sum);
    if cov_ypyp * cov_ytyt == 0.0 {
        return 0.0;
    }
    cov_ytyp / (cov_ytyt * cov_ypyp).sqrt()
}

/// lm-eval's `bootstrap_stderr`: `iters` resamples with replacement drawn in
/// chunks of `min(1000, iters)`, chunk `i` from CPython's `random.Random(i)`
/// (so the replicates are the very ones lm-eval draws; `iters` is rounded
/// down to whole chunks as lm-eval does), then the sample stddev of `f` over
/// them. `None` when `iters` is 0 or yields fewer than 2 replicates.
pub fn bootstrap_stderr<T: Copy>(f: impl Fn(&[T]) -> f64, xs: &[T], iters: usize) -> Option<f64> {
    if iters == 0 || xs.is_empty() {
        return None;
    }
    let chunk = iters.min(1000);
    let chunks = iters / chunk;
    let mut replicates = Vec::with_capacity(chunks * chunk);
    let mut resample = Vec::with_capacity(xs.len());
    for i in 0..chunks {
        let mut rng = PyRandom::new(i as u64);
        for _ in 0..chunk {
            resample.clear();
            for _ in 0..xs.len() {
                resample.push(xs[rng.choice_index(xs.len())]);
            }
            replicates.push(f(&resample));
        }
    }
    sample_stddev(&replicates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_names() {
        assert_eq!("acc_norm".parse::<Metric>(), Ok(Metric::AccNorm));
        assert!("bleu".parse::<Metric>().is_err());
    }

    #[test]
    fn argmax_ties_and_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), Some(1));
        assert_eq!(argmax(&[1.0, f64::NAN, 5.0, f64::NAN]), Some(1));
        assert_eq!(argmax(&[]), None);
    }

    #[test]
    fn acc_norm_divides_by_chars() {
        // -6/2 = -3 beats -4/1 once normalised, but not raw.
        let s = score_sample(&[-4.0, -6.0], &[1, 2], 1).expect("valid");
        assert_eq!((s.pred, s.pred_norm), (0, 1));
        assert!(score_sample(&[-1.0], &[1, 2], 0).is_err());
        assert!(score_sample(&[-1.0, -2.0], &[1, 2], 2).is_err());
    }

    #[test]
    fn f1_and_mcc_match_sklearn() {
        // sklearn: f1_score([1,1,0,0,1],[1,0,0,1,1]) = 0.6666..., mcc = 0.1666...
        let pairs = [(1, 1), (1, 0), (0, 0), (0, 1), (1, 1)];
        assert!((f1_score(&pairs).expect("binary") - 2.0 / 3.0).abs() < 1e-15);
        assert!((matthews_corrcoef(&pairs) - 1.0 / 6.0).abs() < 1e-15);
        assert_eq!(f1_score(&[(1, 0), (0, 0)]), Ok(0.0));
        assert_eq!(matthews_corrcoef(&[(1, 0), (0, 0)]), 0.0);
        assert!(f1_score(&[(0, 2), (1, 1)]).is_err());
    }

    #[test]
    fn mean_stderr_small() {
        let xs = [1.0, 0.0, 1.0, 1.0];
        assert_eq!(mean(&xs), 0.75);
        assert!((mean_stderr(&xs).expect("n>1") - 0.25).abs() < 1e-15);
        assert_eq!(mean_stderr(&[1.0]), None);
    }
}
