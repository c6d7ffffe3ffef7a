//! A llama-family decoder (RMSNorm, rotary attention with grouped KV heads,
//! SiLU-gated MLP, optionally tied head) written with elementary candle ops
//! only, so that `Tensor::backward` differentiates every step. One sequence
//! at a time, causal, no KV cache: it exists to be trained, not served.

use candle_core::{DType, Device, Result, Tensor, Var, D};
use rand::{Rng, SeedableRng};

/// The shape of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    pub rope_theta: f64,
    pub rms_eps: f64,
    pub tied_head: bool,
    /// Rotate adjacent pairs (llama.cpp's layout for `llama` GGUFs, whose
    /// q/k rows its converter permuted) instead of the two halves.
    pub rope_interleaved: bool,
}

impl Config {
    fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
}

/// One decoder block's weights, `[out, in]` like GGUF's and candle's linear
/// layers.
pub struct Block {
    pub attn_norm: Var,
    pub wq: Var,
    pub wk: Var,
    pub wv: Var,
    pub wo: Var,
    pub ffn_norm: Var,
    pub gate: Var,
    pub up: Var,
    pub down: Var,
}

/// A trainable model: every weight a `Var`.
pub struct Student {
    pub cfg: Config,
    pub embed: Var,
    pub blocks: Vec<Block>,
    pub norm: Var,
    /// `None` when the head is the embedding (tied).
    pub head: Option<Var>,
}

/// A `Var` of normal(0, std) entries from a seeded generator (candle's own
/// random tensors are not seedable on the CPU).
fn randn(rng: &mut rand::rngs::StdRng, shape: &[usize], std: f64, dtype: DType) -> Result<Var> {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| {
            // Box-Muller from two uniforms in (0, 1].
            let u1: f64 = 1.0 - rng.random::<f64>();
            let u2: f64 = rng.random::<f64>();
            std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        })
        .collect();
    Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)?)
}

fn ones(n: usize, dtype: DType) -> Result<Var> {
    Var::ones(n, dtype, &Device::Cpu)
}

impl Student {
    /// A model with random weights (std 0.02 / √(2·layers) for the output
    /// projections, as GPT-2 initializes them), deterministic for `seed`.
    pub fn random(cfg: Config, seed: u64, dtype: DType) -> Result<Self> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (h, kv) = (cfg.hidden, cfg.kv_heads * cfg.head_dim());
        let out_std = 0.02 / ((2 * cfg.layers.max(1)) as f64).sqrt();
        let mut blocks = Vec::with_capacity(cfg.layers);
        for _ in 0..cfg.layers {
            blocks.push(Block {
                attn_norm: ones(h, dtype)?,
                wq: randn(&mut rng, &[h, h], 0.02, dtype)?,
                wk: randn(&mut rng, &[kv, h], 0.02, dtype)?,
                wv: randn(&mut rng, &[kv, h], 0.02, dtype)?,
                wo: randn(&mut rng, &[h, h], out_std, dtype)?,
                ffn_norm: ones(h, dtype)?,
                gate: randn(&mut rng, &[cfg.ffn, h], 0.02, dtype)?,
                up: randn(&mut rng, &[cfg.ffn, h], 0.02, dtype)?,
                down: randn(&mut rng, &[h, cfg.ffn], out_std, dtype)?,
            });
        }
        Ok(Student {
            embed: randn(&mut rng, &[cfg.vocab, h], 0.02, dtype)?,
            norm: ones(h, dtype)?,
            head: if cfg.tied_head {
                None
            } else {
                Some(randn(&mut rng, &[cfg.vocab, h], 0.02, dtype)?)
            },
            blocks,
            cfg,
        })
    }

    /// The trainable copy of a llama-family model read into a variant's
    /// working set (every tensor f32; dropped blocks are simply absent from
    /// `block_count`). Other architectures and low-rank factors are refused
    /// with a one-line reason.
    pub fn from_working(
        w: &crate::variant::tensors::Working,
        dtype: DType,
    ) -> std::result::Result<Self, String> {
        if w.arch != "llama" {
            return Err(format!(
                "distillation trains llama-family students; `{}` is not supported yet",
                w.arch
            ));
        }
        if w.tensors
            .keys()
            .any(|k| k.ends_with(".lr_a") || k.ends_with(".lr_b"))
        {
            return Err("a low-rank student (factors lr_a/lr_b) cannot be trained yet".into());
        }
        let meta =
            |k: &str| -> std::result::Result<&candle_core::quantized::gguf_file::Value, String> {
                w.metadata
                    .get(&format!("llama.{k}"))
                    .ok_or_else(|| format!("GGUF metadata llama.{k} is missing"))
            };
        let u = |k: &str| -> std::result::Result<usize, String> {
            meta(k)?
                .to_u32()
                .map(|v| v as usize)
                .map_err(|e| format!("llama.{k}: {e}"))
        };
        let f = |k: &str| -> std::result::Result<f64, String> {
            meta(k)?
                .to_f32()
                .map(f64::from)
                .map_err(|e| format!("llama.{k}: {e}"))
        };
        let get = |name: &str| -> std::result::Result<Var, String> {
            let t = w
                .tensors
                .get(name)
                .ok_or_else(|| format!("tensor {name} is missing"))?;
            t.values
                .to_dtype(dtype)
                .and_then(|v| Var::from_tensor(&v))
                .map_err(|e| format!("{name}: {e}"))
        };
        let embed = get("token_embd.weight")?;
        let (vocab, hidden) = embed.as_tensor().dims2().map_err(|e| e.to_string())?;
        let heads = u("attention.head_count")?;
        let cfg = Config {
            vocab,
            hidden,
            layers: u("block_count")?,
            heads,
            kv_heads: u("attention.head_count_kv").unwrap_or(heads),
            ffn: u("feed_forward_length")?,
            rope_theta: f("rope.freq_base").unwrap_or(10_000.0),
            rms_eps: f("attention.layer_norm_rms_epsilon")?,
            tied_head: !w.tensors.contains_key("output.weight"),
            rope_interleaved: true,
        };
        let mut blocks = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let b = |n: &str| get(&format!("blk.{i}.{n}.weight"));
            blocks.push(Block {
                attn_norm: b("attn_norm")?,
                wq: b("attn_q")?,
                wk: b("attn_k")?,
                wv: b("attn_v")?,
                wo: b("attn_output")?,
                ffn_norm: b("ffn_norm")?,
                gate: b("ffn_gate")?,
                up: b("ffn_up")?,
                down: b("ffn_down")?,
            });
        }
        Ok(Student {
            embed,
            norm: get("output_norm.weight")?,
            head: if cfg.tied_head {
                None
            } else {
                Some(get("output.weight")?)
            },
            blocks,
            cfg,
        })
    }

    /// Every trainable tensor, in a fixed order (embedding, blocks, norm,
    /// head).
    pub fn vars(&self) -> Vec<Var> {
        self.named_vars().into_iter().map(|(_, v)| v).collect()
    }

    /// [`Self::vars`] with their llama.cpp tensor names (`blk.3.attn_q.weight`).
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut v = vec![("token_embd.weight".to_string(), self.embed.clone())];
        for (i, b) in self.blocks.iter().enumerate() {
            for (n, var) in [
                ("attn_norm", &b.attn_norm),
                ("attn_q", &b.wq),
                ("attn_k", &b.wk),
                ("attn_v", &b.wv),
                ("attn_output", &b.wo),
                ("ffn_norm", &b.ffn_norm),
                ("ffn_gate", &b.gate),
                ("ffn_up", &b.up),
                ("ffn_down", &b.down),
            ] {
                v.push((format!("blk.{i}.{n}.weight"), var.clone()));
            }
        }
        v.push(("output_norm.weight".to_string(), self.norm.clone()));
        if let Some(h) = &self.head {
            v.push(("output.weight".to_string(), h.clone()));
        }
        v
    }

    /// Next-token logits `[tokens, vocab]` for one sequence.
    pub fn forward(&self, tokens: &[u32]) -> Result<Tensor> {
        let cfg = &self.cfg;
        let t = tokens.len();
        let ids = Tensor::new(tokens, &Device::Cpu)?;
        let mut x = self.embed.as_tensor().index_select(&ids, 0)?;
        let dtype = x.dtype();
        let (cos, sin) = rope_tables(t, cfg.head_dim(), cfg.rope_theta, dtype)?;
        let rotate = if cfg.rope_interleaved {
            rope_pairs
        } else {
            rope
        };
        let mask = causal_mask(t, dtype)?;
        for b in &self.blocks {
            let a = rms_norm(&x, b.attn_norm.as_tensor(), cfg.rms_eps)?;
            x = (x + attention(cfg, b, &a, (&cos, &sin, rotate), &mask)?)?;
            let m = rms_norm(&x, b.ffn_norm.as_tensor(), cfg.rms_eps)?;
            let g = linear(&m, b.gate.as_tensor())?;
            let u = linear(&m, b.up.as_tensor())?;
            x = (x + linear(&(silu(&g)? * u)?, b.down.as_tensor())?)?;
        }
        let x = rms_norm(&x, self.norm.as_tensor(), cfg.rms_eps)?;
        linear(&x, self.head.as_ref().unwrap_or(&self.embed).as_tensor())
    }
}

/// `x · wᵀ` for `x` `[t, in]` and `w` `[out, in]`.
fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.matmul(&w.t()?)
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&inv)?.broadcast_mul(w)
}

/// `x · sigmoid(x)` from elementary ops.
fn silu(x: &Tensor) -> Result<Tensor> {
    let denom = (x.neg()?.exp()? + 1.0)?;
    x.div(&denom)
}

/// cos and sin `[t, head_dim / 2]` of the rotary angles.
fn rope_tables(t: usize, head_dim: usize, theta: f64, dtype: DType) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(t * half);
    let mut sin = Vec::with_capacity(t * half);
    for p in 0..t {
        for i in 0..half {
            let freq = theta.powf(-((2 * i) as f64) / head_dim as f64);
            let a = p as f64 * freq;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    let dev = Device::Cpu;
    Ok((
        Tensor::from_vec(cos, (t, half), &dev)?.to_dtype(dtype)?,
        Tensor::from_vec(sin, (t, half), &dev)?.to_dtype(dtype)?,
    ))
}

/// Rotates `x` `[heads, t, head_dim]` by position (the "half-split" rotary
/// layout of llama.cpp's NEOX mode and of Hugging Face's llama).
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let r1 = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
    let r2 = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
    Tensor::cat(&[r1, r2], D::Minus1)
}

/// Rotates adjacent pairs `(x[2i], x[2i+1])` of `x` `[heads, t, head_dim]`.
fn rope_pairs(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (h, t, d) = x.dims3()?;
    let x = x.reshape((h, t, d / 2, 2))?;
    let even = x.narrow(3, 0, 1)?.squeeze(3)?;
    let odd = x.narrow(3, 1, 1)?.squeeze(3)?;
    let r_even = (even.broadcast_mul(cos)? - odd.broadcast_mul(sin)?)?;
    let r_odd = (even.broadcast_mul(sin)? + odd.broadcast_mul(cos)?)?;
    Tensor::stack(&[r_even, r_odd], 3)?.reshape((h, t, d))
}

/// 0 on and below the diagonal, a large negative number above it.
fn causal_mask(t: usize, dtype: DType) -> Result<Tensor> {
    let v: Vec<f64> = (0..t * t)
        .map(|k| if k % t > k / t { -1e9 } else { 0.0 })
        .collect();
    Tensor::from_vec(v, (t, t), &Device::Cpu)?.to_dtype(dtype)
}

/// A rotary embedding: `x` `[heads, t, head_dim]`, cos, sin `[t, head_dim / 2]`.
type Rotate = fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>;

fn attention(
    cfg: &Config,
    b: &Block,
    x: &Tensor,
    (cos, sin, rotate): (&Tensor, &Tensor, Rotate),
    mask: &Tensor,
) -> Result<Tensor> {
    let t = x.dim(0)?;
    let hd = cfg.head_dim();
    let heads = |w: &Tensor, n: usize| -> Result<Tensor> {
        linear(x, w)?
            .reshape((t, n, hd))?
            .transpose(0, 1)?
            .contiguous()
    };
    let q = rotate(&heads(b.wq.as_tensor(), cfg.heads)?, cos, sin)?;
    let k = rotate(&heads(b.wk.as_tensor(), cfg.kv_heads)?, cos, sin)?;
    let v = heads(b.wv.as_tensor(), cfg.kv_heads)?;
    // Grouped KV heads: each KV head serves `heads / kv_heads` query heads.
    let group = cfg.heads / cfg.kv_heads;
    let repeat = |x: Tensor| -> Result<Tensor> {
        if group == 1 {
            return Ok(x);
        }
        let parts: Vec<Tensor> = (0..cfg.kv_heads)
            .flat_map(|h| std::iter::repeat_n(h, group))
            .map(|h| x.narrow(0, h, 1))
            .collect::<Result<_>>()?;
        Tensor::cat(&parts, 0)
    };
    let (k, v) = (repeat(k)?, repeat(v)?);
    let scores = (q.matmul(&k.transpose(1, 2)?.contiguous()?)? / (hd as f64).sqrt())?;
    let scores = scores.broadcast_add(mask)?;
    let probs = softmax(&scores)?;
    let out = probs.matmul(&v)?; // [heads, t, hd]
    let out = out
        .transpose(0, 1)?
        .contiguous()?
        .reshape((t, cfg.hidden))?;
    linear(&out, b.wo.as_tensor())
}

/// Softmax over the last dimension from elementary ops.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&m)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}
