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
