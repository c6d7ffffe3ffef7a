//! Optimizer steps that keep a compressed student's structure: AdamW
//! (candle-nn's) followed by re-applying each tensor's mask, so entries a
//! pruning step zeroed stay zero. (Dropped blocks stay dropped because the
//! student simply has fewer blocks; low-rank factors would be trained as
//! their two factors.)

use candle_core::{Result, Tensor, Var};
use candle_nn::Optimizer;

/// A 0/1 mask per trainable tensor (`None`: every entry trains).
pub struct Masked {
    opt: candle_nn::AdamW,
    vars: Vec<(Var, Option<Tensor>)>,
}

impl Masked {
    /// `masks[i]` belongs to `vars[i]`; a mask of a tensor's zeros is
    /// [`zeros_mask`].
    pub fn new(
        vars: Vec<Var>,
        masks: Vec<Option<Tensor>>,
        params: candle_nn::ParamsAdamW,
    ) -> Result<Self> {
        let opt = candle_nn::AdamW::new(vars.clone(), params)?;
        Ok(Masked {
            opt,
            vars: vars.into_iter().zip(masks).collect(),
        })
    }

    /// One step on `loss`, then every masked entry back to zero.
    pub fn step(&mut self, loss: &Tensor) -> Result<()> {
        self.opt.backward_step(loss)?;
        for (v, m) in &self.vars {
            if let Some(m) = m {
                v.set(&(v.as_tensor() * m)?)?;
            }
        }
        Ok(())
    }
}

/// 1 where `t` is non-zero, 0 where it is zero: the structure a pruning
/// step left.
pub fn zeros_mask(t: &Tensor) -> Result<Tensor> {
    t.ne(0.0)?.to_dtype(t.dtype())
}

/// How a student is trained (see [`distill`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOptions {
    /// Optimizer steps.
    pub steps: usize,
    /// Sequences per step (their losses are averaged).
    pub batch: usize,
    pub lr: f64,
    pub temperature: f64,
    /// Weight of the KL term; `1 − alpha` goes to the next-token loss.
    pub alpha: f64,
    /// Order of the corpus's sequences.
    pub seed: u64,
}

/// What a training run did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TrainReport {
    /// The loss of every step (before its update).
    pub losses: Vec<f64>,
    pub tokens_seen: usize,
    pub wall_time_s: f64,
}

/// Trains `student` towards `teacher` on `corpus` (token sequences, each
/// at least 2 long): each step draws `batch` sequences in an order fixed
/// by `seed`, computes [`super::distill_loss`] against the teacher's logits
/// (computed without gradients) and takes one masked AdamW step.
/// `on_step(step, loss)` reports progress. Deterministic for a seed.
pub fn distill(
    student: &super::Student,
    teacher: &super::Student,
    corpus: &[Vec<u32>],
    masks: Vec<Option<Tensor>>,
    opts: &TrainOptions,
    on_step: &mut dyn FnMut(usize, f64),
) -> Result<TrainReport> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let usable: Vec<&Vec<u32>> = corpus.iter().filter(|s| s.len() >= 2).collect();
    if usable.is_empty() {
        candle_core::bail!("the corpus has no sequence of two or more tokens");
    }
    let mut opt = Masked::new(
        student.vars(),
        masks,
        candle_nn::ParamsAdamW {
            lr: opts.lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    let mut order: Vec<usize> = (0..usable.len()).collect();
    order.shuffle(&mut rng);
    let mut next = 0usize;
    let start = std::time::Instant::now();
    let mut report = TrainReport {
        losses: Vec::with_capacity(opts.steps),
        tokens_seen: 0,
        wall_time_s: 0.0,
    };
    for step in 0..opts.steps {
        let mut total: Option<Tensor> = None;
        for _ in 0..opts.batch.max(1) {
            if next == order.len() {
                order.shuffle(&mut rng);
                next = 0;
            }
            let seq = usable[order[next]];
            next += 1;
            let t = teacher.forward(seq)?.detach();
            let s = student.forward(seq)?;
            let l = super::distill_loss(&s, &t, opts.temperature, opts.alpha, &seq[1..])?;
            report.tokens_seen += seq.len();
            total = Some(match total {
                None => l,
                Some(acc) => (acc + l)?,
            });
        }
        let loss = match total {
            Some(t) => (t / opts.batch.max(1) as f64)?,
            None => candle_core::bail!("empty batch"),
        };
        let value = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        report.losses.push(value);
        on_step(step, value);
        opt.step(&loss)?;
    }
    report.wall_time_s = start.elapsed().as_secs_f64();
    Ok(report)
}
