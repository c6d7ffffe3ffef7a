//! The training loop: AdamW steps that keep a compressed student's
//! structure (entries a pruning step zeroed are re-zeroed after every
//! update; dropped blocks stay dropped because the student has fewer
//! blocks), a corpus order fixed by a seed, and a state that can be saved
//! and restored so a killed run resumes bit for bit.
//!
//! AdamW is written here (the update of candle-nn's `AdamW`, Loshchilov &
//! Hutter's decoupled weight decay with bias-corrected moments) because a
//! checkpoint needs the moments, which candle-nn keeps private.

use candle_core::{DType, Result, Tensor, Var};

/// AdamW followed by re-applying each tensor's 0/1 mask.
pub struct Masked {
    params: candle_nn::ParamsAdamW,
    vars: Vec<(Var, Option<Tensor>)>,
    /// First and second moments, one pair per var.
    moments: Vec<(Tensor, Tensor)>,
    /// Updates taken so far.
    t: usize,
}

impl Masked {
    /// `masks[i]` belongs to `vars[i]` (`None`: every entry trains); a mask
    /// of a tensor's zeros is [`zeros_mask`].
    pub fn new(
        vars: Vec<Var>,
        masks: Vec<Option<Tensor>>,
        params: candle_nn::ParamsAdamW,
    ) -> Result<Self> {
        let moments = vars
            .iter()
            .map(|v| Ok((v.as_tensor().zeros_like()?, v.as_tensor().zeros_like()?)))
            .collect::<Result<_>>()?;
        Ok(Masked {
            params,
            vars: vars.into_iter().zip(masks).collect(),
            moments,
            t: 0,
        })
    }

    /// One step on `loss`, then every masked entry back to zero.
    pub fn step(&mut self, loss: &Tensor) -> Result<()> {
        let grads = loss.backward()?;
        self.t += 1;
        let p = &self.params;
        let scale_m = 1.0 / (1.0 - p.beta1.powi(self.t as i32));
        let scale_v = 1.0 / (1.0 - p.beta2.powi(self.t as i32));
        for ((var, mask), (m, v)) in self.vars.iter().zip(self.moments.iter_mut()) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            *m = ((&*m * p.beta1)? + (g * (1.0 - p.beta1))?)?;
            *v = ((&*v * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let m_hat = (&*m * scale_m)?;
            let v_hat = (&*v * scale_v)?;
            let theta = (var.as_tensor() * (1.0 - p.lr * p.weight_decay))?;
            let update = (m_hat / (v_hat.sqrt()? + p.eps)?)?;
            let mut next = (theta - (update * p.lr)?)?;
            if let Some(mask) = mask {
                next = (next * mask)?;
            }
            var.set(&next)?;
        }
        Ok(())
    }

    /// Updates taken and the moments, for a checkpoint.
    pub fn state(&self) -> (usize, &[(Tensor, Tensor)]) {
        (self.t, &self.moments)
    }

    /// Puts back what [`Self::state`] returned.
    pub fn restore(&mut self, t: usize, moments: Vec<(Tensor, Tensor)>) -> Result<()> {
        if moments.len() != self.moments.len() {
            candle_core::bail!(
                "the checkpoint holds {} moment pairs, the student {}",
                moments.len(),
                self.moments.len()
            );
        }
        for ((a, _), (b, _)) in self.moments.iter().zip(&moments) {
            if a.shape() != b.shape() {
                candle_core::bail!(
                    "a checkpoint moment has shape {:?}, not {:?}",
                    b.shape(),
                    a.shape()
                );
            }
        }
        self.t = t;
        self.moments = moments;
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

/// Which sequence each step reads: `steps × batch` indices into a corpus of
/// `n`, epoch after epoch, each epoch a fresh shuffle from one generator
/// seeded with `seed`.
pub fn schedule(n: usize, steps: usize, batch: usize, seed: u64) -> Vec<usize> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    let mut next = 0usize;
    let mut out = Vec::with_capacity(steps * batch);
    for _ in 0..steps * batch.max(1) {
        if next == order.len() {
            order.shuffle(&mut rng);
            next = 0;
        }
        out.push(order[next]);
        next += 1;
    }
    out
}

/// A training run that can stop after any step and be resumed from its
/// state: the student's weights, the optimizer's moments and the number of
/// steps done (the corpus order is a function of the seed).
pub struct Trainer<'a> {
    student: &'a super::Student,
    teacher: &'a super::Student,
    corpus: Vec<&'a [u32]>,
    order: Vec<usize>,
    opt: Masked,
    opts: TrainOptions,
    pub losses: Vec<f64>,
    pub tokens_seen: usize,
}

impl<'a> Trainer<'a> {
    /// `corpus` holds token sequences; those shorter than 2 are skipped.
    pub fn new(
        student: &'a super::Student,
        teacher: &'a super::Student,
        corpus: &'a [Vec<u32>],
        masks: Vec<Option<Tensor>>,
        opts: &TrainOptions,
    ) -> Result<Self> {
        let corpus: Vec<&[u32]> = corpus
            .iter()
            .filter(|s| s.len() >= 2)
            .map(Vec::as_slice)
            .collect();
        if corpus.is_empty() {
            candle_core::bail!("the corpus has no sequence of two or more tokens");
        }
        let opt = Masked::new(
            student.vars(),
            masks,
            candle_nn::ParamsAdamW {
                lr: opts.lr,
                weight_decay: 0.0,
                ..Default::default()
            },
        )?;
        Ok(Trainer {
            order: schedule(corpus.len(), opts.steps, opts.batch.max(1), opts.seed),
            student,
            teacher,
            corpus,
            opt,
            opts: opts.clone(),
            losses: Vec::with_capacity(opts.steps),
            tokens_seen: 0,
        })
    }

    /// Steps done so far.
    pub fn done(&self) -> usize {
        self.losses.len()
    }

    /// Runs the next step and returns its loss. A non-finite loss is
    /// returned without updating anything (the weights stay as they were),
    /// so the caller can stop with the last good state.
    pub fn step(&mut self) -> Result<f64> {
        let b = self.opts.batch.max(1);
        let k = self.done();
        if k >= self.opts.steps {
            candle_core::bail!("all {} steps are done", self.opts.steps);
        }
        let mut total: Option<Tensor> = None;
        let mut tokens = 0;
        for &i in &self.order[k * b..(k + 1) * b] {
            let seq = self.corpus[i];
            let t = self.teacher.forward(seq)?.detach();
            let s = self.student.forward(seq)?;
            let l = super::distill_loss(&s, &t, self.opts.temperature, self.opts.alpha, &seq[1..])?;
            tokens += seq.len();
            total = Some(match total {
                None => l,
                Some(acc) => (acc + l)?,
            });
        }
        let loss = match total {
            Some(t) => (t / b as f64)?,
            None => candle_core::bail!("empty batch"),
        };
        let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !value.is_finite() {
            return Ok(value);
        }
        self.opt.step(&loss)?;
        self.losses.push(value);
        self.tokens_seen += tokens;
        Ok(value)
    }

    /// The optimizer's updates taken and moments (the weights are the
    /// student's vars).
    pub fn optimizer_state(&self) -> (usize, &[(Tensor, Tensor)]) {
        self.opt.state()
    }

    /// Continues from a saved state: the student's vars must already hold
    /// the saved weights.
    pub fn resume(
        &mut self,
        losses: Vec<f64>,
        tokens_seen: usize,
        moments: Vec<(Tensor, Tensor)>,
    ) -> Result<()> {
        if losses.len() > self.opts.steps {
            candle_core::bail!(
                "the checkpoint is at step {}, past the {} steps asked",
                losses.len(),
                self.opts.steps
            );
        }
        self.opt.restore(losses.len(), moments)?;
        self.losses = losses;
        self.tokens_seen = tokens_seen;
        Ok(())
    }
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
    let start = std::time::Instant::now();
    let mut t = Trainer::new(student, teacher, corpus, masks, opts)?;
    for step in 0..opts.steps {
        let value = t.step()?;
        if !value.is_finite() {
            candle_core::bail!("the loss became {value} at step {step}");
        }
        on_step(step, value);
    }
    Ok(TrainReport {
        losses: t.losses,
        tokens_seen: t.tokens_seen,
        wall_time_s: start.elapsed().as_secs_f64(),
    })
}
