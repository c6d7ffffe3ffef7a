//! The decoders of the llama family (llama, Qwen2's q/k/v biases, Gemma 3's
//! scaled embedding, q/k norms, post-norms, GELU and sliding windows) —
//! RMSNorm, rotary attention with grouped KV heads, a gated MLP, optionally
//! tied head — written with elementary candle ops only, so that
//! `Tensor::backward` differentiates every step. One sequence at a time,
//! causal, no KV cache: it exists to be trained, not served.

use candle_core::{DType, Device, Result, Tensor, Var, D};
use rand::{Rng, SeedableRng};

/// The shape of a model.
#[derive(Debug, Clone, PartialEq, Default)]
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
    /// Width of a head when it is not `hidden / heads` (Gemma 3).
    pub key_length: Option<usize>,
    /// The embedding is multiplied by this (Gemma 3: √hidden).
    pub embed_scale: Option<f64>,
    /// GELU (tanh approximation) gates the MLP instead of SiLU (Gemma 3).
    pub gelu: bool,
    /// Rotary base of sliding-window blocks (Gemma 3's local layers).
    pub local_rope_theta: f64,
}

impl Config {
    fn head_dim(&self) -> usize {
        self.key_length.unwrap_or(self.hidden / self.heads)
    }
}

/// What some families add to a block (all `None` for llama).
#[derive(Default)]
pub struct Extras {
    /// q/k/v biases (Qwen2).
    pub bq: Option<Var>,
    pub bk: Option<Var>,
    pub bv: Option<Var>,
    /// RMS norms over each head's queries and keys (Gemma 3).
    pub q_norm: Option<Var>,
    pub k_norm: Option<Var>,
    /// Norms of the attention's and the MLP's outputs (Gemma 3).
    pub post_attn_norm: Option<Var>,
    pub post_ffn_norm: Option<Var>,
    /// Keys further back than this are not seen (Gemma 3's local layers).
    pub window: Option<usize>,
    /// Low-rank projections (by name, `attn_q`…): the block's field holds
    /// the factor `A` `[r, in]` (`.weight.lr_a`) and this the factor `B`
    /// `[out, r]` (`.weight.lr_b`), so `y = (x·Aᵀ)·Bᵀ` and both train.
    pub lr_b: std::collections::BTreeMap<String, Var>,
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
    pub extra: Extras,
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
        let qd = cfg.heads * cfg.head_dim();
        let out_std = 0.02 / ((2 * cfg.layers.max(1)) as f64).sqrt();
        let mut blocks = Vec::with_capacity(cfg.layers);
        for _ in 0..cfg.layers {
            blocks.push(Block {
                attn_norm: ones(h, dtype)?,
                wq: randn(&mut rng, &[qd, h], 0.02, dtype)?,
                wk: randn(&mut rng, &[kv, h], 0.02, dtype)?,
                wv: randn(&mut rng, &[kv, h], 0.02, dtype)?,
                wo: randn(&mut rng, &[h, qd], out_std, dtype)?,
                ffn_norm: ones(h, dtype)?,
                gate: randn(&mut rng, &[cfg.ffn, h], 0.02, dtype)?,
                up: randn(&mut rng, &[cfg.ffn, h], 0.02, dtype)?,
                down: randn(&mut rng, &[h, cfg.ffn], out_std, dtype)?,
                extra: Extras::default(),
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
    /// `block_count`; low-rank factors stay two factors). Other architectures are refused
    /// with a one-line reason.
    pub fn from_working(
        w: &crate::variant::tensors::Working,
        dtype: DType,
    ) -> std::result::Result<Self, String> {
        let arch = w.arch.as_str();
        if !matches!(arch, "llama" | "qwen2" | "gemma3") {
            return Err(format!(
                "distillation trains llama, qwen2 and gemma3 students; `{arch}` is not supported yet"
            ));
        }
        let meta =
            |k: &str| -> std::result::Result<&candle_core::quantized::gguf_file::Value, String> {
                w.metadata
                    .get(&format!("{arch}.{k}"))
                    .ok_or_else(|| format!("GGUF metadata {arch}.{k} is missing"))
            };
        let u = |k: &str| -> std::result::Result<usize, String> {
            meta(k)?
                .to_u32()
                .map(|v| v as usize)
                .map_err(|e| format!("{arch}.{k}: {e}"))
        };
        let f = |k: &str| -> std::result::Result<f64, String> {
            meta(k)?
                .to_f32()
                .map(f64::from)
                .map_err(|e| format!("{arch}.{k}: {e}"))
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
        let gemma = arch == "gemma3";
        let cfg = Config {
            vocab,
            hidden,
            layers: u("block_count")?,
            heads,
            kv_heads: u("attention.head_count_kv").unwrap_or(heads),
            ffn: u("feed_forward_length")?,
            rope_theta: f("rope.freq_base").unwrap_or(if gemma { 1e6 } else { 10_000.0 }),
            rms_eps: f("attention.layer_norm_rms_epsilon")?,
            tied_head: !w.tensors.contains_key("output.weight"),
            // llama.cpp's converter permutes only llama's q/k rows.
            rope_interleaved: arch == "llama",
            key_length: u("attention.key_length").ok(),
            // As the engine and transformers do: the scale in f32 first.
            embed_scale: gemma.then(|| f64::from((hidden as f64).sqrt() as f32)),
            gelu: gemma,
            local_rope_theta: 10_000.0,
        };
        // Gemma 3: every 6th block (by its index before any was dropped)
        // attends globally, the others within the window.
        let window = if gemma {
            u("attention.sliding_window").ok()
        } else {
            None
        };
        let origin: Option<Vec<usize>> = match w.metadata.get(crate::model::gguf::LAYER_ORIGIN_KEY)
        {
            Some(candle_core::quantized::gguf_file::Value::Array(a)) => a
                .iter()
                .map(|v| v.to_i32().ok().map(|x| x as usize))
                .collect(),
            _ => None,
        };
        let opt = |name: String| -> std::result::Result<Option<Var>, String> {
            if w.tensors.contains_key(&name) {
                get(&name).map(Some)
            } else {
                Ok(None)
            }
        };
        let mut blocks = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let mut lr_b = std::collections::BTreeMap::new();
            let mut b = |n: &str| -> std::result::Result<Var, String> {
                let name = format!("blk.{i}.{n}.weight");
                if w.tensors.contains_key(&name) {
                    return get(&name);
                }
                let (a, b) = (format!("{name}.lr_a"), format!("{name}.lr_b"));
                if w.tensors.contains_key(&a) {
                    lr_b.insert(n.to_string(), get(&b)?);
                    return get(&a);
                }
                get(&name)
            };
            let index = origin.as_ref().and_then(|o| o.get(i).copied()).unwrap_or(i);
            let (attn_norm, wq, wk, wv, wo) = (
                b("attn_norm")?,
                b("attn_q")?,
                b("attn_k")?,
                b("attn_v")?,
                b("attn_output")?,
            );
            let (ffn_norm, gate, up, down) =
                (b("ffn_norm")?, b("ffn_gate")?, b("ffn_up")?, b("ffn_down")?);
            let extra = Extras {
                bq: opt(format!("blk.{i}.attn_q.bias"))?,
                bk: opt(format!("blk.{i}.attn_k.bias"))?,
                bv: opt(format!("blk.{i}.attn_v.bias"))?,
                q_norm: opt(format!("blk.{i}.attn_q_norm.weight"))?,
                k_norm: opt(format!("blk.{i}.attn_k_norm.weight"))?,
                post_attn_norm: opt(format!("blk.{i}.post_attention_norm.weight"))?,
                post_ffn_norm: opt(format!("blk.{i}.post_ffw_norm.weight"))?,
                window: window.filter(|_| !(index + 1).is_multiple_of(6)),
                lr_b,
            };
            blocks.push(Block {
                attn_norm,
                wq,
                wk,
                wv,
                wo,
                ffn_norm,
                gate,
                up,
                down,
                extra,
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
                match b.extra.lr_b.get(n) {
                    Some(f) => {
                        v.push((format!("blk.{i}.{n}.weight.lr_a"), var.clone()));
                        v.push((format!("blk.{i}.{n}.weight.lr_b"), f.clone()));
                    }
                    None => v.push((format!("blk.{i}.{n}.weight"), var.clone())),
                }
            }
            let e = &b.extra;
            for (n, var) in [
                ("attn_q.bias", &e.bq),
                ("attn_k.bias", &e.bk),
                ("attn_v.bias", &e.bv),
                ("attn_q_norm.weight", &e.q_norm),
                ("attn_k_norm.weight", &e.k_norm),
                ("post_attention_norm.weight", &e.post_attn_norm),
                ("post_ffw_norm.weight", &e.post_ffn_norm),
            ] {
                if let Some(var) = var {
                    v.push((format!("blk.{i}.{n}"), var.clone()));
                }
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
        if let Some(s) = cfg.embed_scale {
            x = (x * s)?;
        }
        let dtype = x.dtype();
        let global = rope_tables(t, cfg.head_dim(), cfg.rope_theta, dtype)?;
        let window = self.blocks.iter().find_map(|b| b.extra.window);
        let local = match window {
            Some(_) => rope_tables(t, cfg.head_dim(), cfg.local_rope_theta, dtype)?,
            None => global.clone(),
        };
        let rotate = if cfg.rope_interleaved {
            rope_pairs
        } else {
            rope
        };
        let mask = causal_mask(t, None, dtype)?;
        let local_mask = match window {
            Some(w) => causal_mask(t, Some(w), dtype)?,
            None => mask.clone(),
        };
        for b in &self.blocks {
            let (rot, m) = match b.extra.window {
                Some(_) => (&local, &local_mask),
                None => (&global, &mask),
            };
            let a = rms_norm(&x, b.attn_norm.as_tensor(), cfg.rms_eps)?;
            let mut h = attention(cfg, b, &a, (&rot.0, &rot.1, rotate), m)?;
            if let Some(n) = &b.extra.post_attn_norm {
                h = rms_norm(&h, n.as_tensor(), cfg.rms_eps)?;
            }
            x = (x + h)?;
            let m = rms_norm(&x, b.ffn_norm.as_tensor(), cfg.rms_eps)?;
            let g = b.proj(&m, "ffn_gate")?;
            let u = b.proj(&m, "ffn_up")?;
            let act = if cfg.gelu { gelu_tanh(&g)? } else { silu(&g)? };
            let mut h = b.proj(&(act * u)?, "ffn_down")?;
            if let Some(n) = &b.extra.post_ffn_norm {
                h = rms_norm(&h, n.as_tensor(), cfg.rms_eps)?;
            }
            x = (x + h)?;
        }
        let x = rms_norm(&x, self.norm.as_tensor(), cfg.rms_eps)?;
        linear(&x, self.head.as_ref().unwrap_or(&self.embed).as_tensor())
    }
}

impl Block {
    /// The projection `name` (`attn_q`, …, `ffn_down`) of `x`: one matmul,
    /// or two through a low-rank pair.
    fn proj(&self, x: &Tensor, name: &str) -> Result<Tensor> {
        let w = match name {
            "attn_q" => &self.wq,
            "attn_k" => &self.wk,
            "attn_v" => &self.wv,
            "attn_output" => &self.wo,
            "ffn_gate" => &self.gate,
            "ffn_up" => &self.up,
            _ => &self.down,
        };
        let y = linear(x, w.as_tensor())?;
        match self.extra.lr_b.get(name) {
            Some(b) => linear(&y, b.as_tensor()),
            None => Ok(y),
        }
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

/// GELU's tanh approximation, `x · σ(2·√(2/π)·(x + 0.044715·x³))` (the
/// same as `0.5·x·(1 + tanh(…))`), from elementary ops.
fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    // x·x·x, not powf: candle's powf is exp(3·ln x), NaN for x < 0.
    let inner =
        ((x + ((x.sqr()? * x)? * 0.044715)?)? * (2.0 * (2.0 / std::f64::consts::PI).sqrt()))?;
    x.div(&(inner.neg()?.exp()? + 1.0)?)
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

/// 0 where query `i` sees key `j` (`j ≤ i`, and `i − j < window` when
/// there is one), a large negative number elsewhere.
fn causal_mask(t: usize, window: Option<usize>, dtype: DType) -> Result<Tensor> {
    let v: Vec<f64> = (0..t * t)
        .map(|k| {
            let (i, j) = (k / t, k % t);
            if j > i || window.is_some_and(|w| i - j >= w) {
                -1e9
            } else {
                0.0
            }
        })
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
    let heads = |w: &str, bias: &Option<Var>, norm: &Option<Var>, n: usize| -> Result<Tensor> {
        let mut y = b.proj(x, w)?;
        if let Some(b) = bias {
            y = y.broadcast_add(b.as_tensor())?;
        }
        let mut y = y.reshape((t, n, hd))?;
        if let Some(w) = norm {
            y = rms_norm(&y, w.as_tensor(), cfg.rms_eps)?;
        }
        y.transpose(0, 1)?.contiguous()
    };
    let e = &b.extra;
    let q = rotate(&heads("attn_q", &e.bq, &e.q_norm, cfg.heads)?, cos, sin)?;
    let k = rotate(&heads("attn_k", &e.bk, &e.k_norm, cfg.kv_heads)?, cos, sin)?;
    let v = heads("attn_v", &e.bv, &None, cfg.kv_heads)?;
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
        .reshape((t, cfg.heads * hd))?;
    b.proj(&out, "attn_output")
}

/// Softmax over the last dimension from elementary ops.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&m)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}
