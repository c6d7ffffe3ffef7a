//! The distillation loss (Hinton et al., 2015): forward KL from the
//! teacher's to the student's next-token distributions at a temperature,
//! scaled by T² so its gradients keep their size as T changes, optionally
//! mixed with the plain next-token cross-entropy on the text itself.

use candle_core::{Result, Tensor, D};

/// `log softmax` over the last dimension from elementary ops.
fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?;
    let shifted = x.broadcast_sub(&m)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// The loss for logits `[t, vocab]`:
/// `alpha · T² · mean_t KL(softmax(teacher_t / T) ‖ softmax(student_t / T))`
/// plus `(1 − alpha) · mean_t CE(student_t, next_t)`.
///
/// `next` holds the token that follows each position (its length is the
/// number of positions the cross-entropy covers, from the first; it may
/// be shorter than `t`, or empty when `alpha` is 1). The teacher's logits
/// carry no gradient.
pub fn distill_loss(
    student: &Tensor,
    teacher: &Tensor,
    temperature: f64,
    alpha: f64,
    next: &[u32],
) -> Result<Tensor> {
    let t = student.dim(0)?;
    let teacher = teacher.detach();
    let ls = log_softmax(&(student / temperature)?)?;
    let lt = log_softmax(&(teacher / temperature)?)?;
    let kl = (lt.exp()? * (lt - &ls)?)?.sum(D::Minus1)?.mean_all()?;
    let mut loss = (kl * (alpha * temperature * temperature))?;
    if alpha < 1.0 && !next.is_empty() {
        let n = next.len().min(t);
        let ids = Tensor::new(&next[..n], student.device())?.unsqueeze(1)?;
        let lp = log_softmax(&student.narrow(0, 0, n)?)?;
        let ce = lp.gather(&ids, 1)?.mean_all()?.neg()?;
        loss = (loss + (ce * (1.0 - alpha))?)?;
    }
    Ok(loss)
}
