//! Gemma 3 text decoder: scaled embeddings, q/k RMS norms, pre- and
//! post-norms around attention and MLP, GELU(tanh) gating, and sliding-window
//! layers (every sixth layer global) with their own RoPE base.
//!
//! GGUF norm weights already include Gemma's `1 + w` offset (llama.cpp's
//! converter adds it), so a plain RMS norm applies them.

use candle_core::{Result, Tensor};

use crate::backend::candle::nn::attention::rope_attend;
use crate::backend::candle::nn::embedding::Embedding;
use crate::backend::candle::nn::kv_cache::KvCache;
use crate::backend::candle::nn::linear::Linear;
use crate::backend::candle::nn::loader::Loader;
use crate::backend::candle::nn::mlp::{Activation, GatedMlp};
use crate::backend::candle::nn::norm::RmsNorm;
use crate::backend::candle::nn::rope::{rope_cache, Rope};
use crate::backend::candle::span::{Finish, Span};
use crate::backend::candle::{CausalLm, LoadError, ModelInfo};
use crate::model::gguf::LAYER_ORIGIN_KEY;

/// llama.cpp's fixed values for Gemma 3 (not stored in GGUF).
const SLIDING_WINDOW_PATTERN: usize = 6;
const LOCAL_ROPE_BASE: f64 = 10_000.0;

#[derive(Debug, Clone)]
pub struct Config {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub hidden: usize,
    pub rms_eps: f32,
    pub rope_theta: f64,
    pub sliding_window: Option<usize>,
    pub context_length: usize,
}

impl Config {
    fn from_gguf(loader: &Loader<'_>) -> std::result::Result<Self, LoadError> {
        let g = &*loader.gguf;
        let n_head = g.u32("gemma3.attention.head_count")? as usize;
        let hidden = g.u32("gemma3.embedding_length")? as usize;
        Ok(Self {
            n_layer: g.u32("gemma3.block_count")? as usize,
            n_head,
            n_kv_head: g
                .opt_u32("gemma3.attention.head_count_kv")
                .map_or(n_head, |x| x as usize),
            head_dim: g
                .opt_u32("gemma3.attention.key_length")
                .map_or(hidden / n_head, |x| x as usize),
            hidden,
            rms_eps: g.f32("gemma3.attention.layer_norm_rms_epsilon")?,
            rope_theta: g.opt_f32("gemma3.rope.freq_base").unwrap_or(1_000_000.0) as f64,
            sliding_window: g
                .opt_u32("gemma3.attention.sliding_window")
                .map(|x| x as usize),
            context_length: g.opt_u32("gemma3.context_length").unwrap_or(32_768) as usize,
        })
    }
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    /// `Some(window)` on sliding-window layers.
    window: Option<usize>,
}

impl Attention {
    fn forward(
        &self,
        x: &Tensor,
        rope: &mut Rope,
        cache: &mut KvCache,
        span: &Span,
        mask: Option<&Tensor>,
        finish: Option<&Finish>,
    ) -> Result<Option<Tensor>> {
        let heads = |y: Tensor, n: usize| -> Result<Tensor> {
            let (b, t, _) = y.dims3()?;
            y.reshape((b, t, n, self.head_dim))
        };
        let k = heads(self.k.forward(x)?, self.n_kv_head)?;
        let v = heads(self.v.forward(x)?, self.n_kv_head)?;
        let k = self.k_norm.forward(&k)?.transpose(1, 2)?;
        let v = v.transpose(1, 2)?;
        let (k, v) = rope_cache(&k, &v, rope, cache, span)?;
        let Some((x, queries, mask)) = Finish::queries_of(finish, x, span, mask)? else {
            return Ok(None);
        };
        let q = heads(self.q.forward(&x)?, self.n_head)?;
        let q = self.q_norm.forward(&q)?.transpose(1, 2)?;
        // llama.cpp: 1/sqrt(head_dim) (query_pre_attn_scalar = head_dim) for all but 27B.
        let y = rope_attend(&q, &k, &v, rope, queries, mask.as_ref())?;
        self.o.forward(&y).map(Some)
    }
}

struct DecoderLayer {
    attn_norm: RmsNorm,
    attn: Attention,
    post_attn_norm: RmsNorm,
    ffn_norm: RmsNorm,
    mlp: GatedMlp,
    post_ffn_norm: RmsNorm,
    cache: KvCache,
}

pub struct Model {
    embed: Embedding,
    embed_scale: f64,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope_global: Rope,
    rope_local: Rope,
    info: ModelInfo,
}

impl Model {
    pub fn load(loader: &mut Loader<'_>) -> std::result::Result<Self, LoadError> {
        let cfg = Config::from_gguf(loader)?;
        let (embed, lm_head, vocab) =
            crate::backend::candle::nn::loader::embedding_and_head(loader)?;
        // A variant with dropped blocks records each block's original index,
        // which decides whether it is a sliding-window layer.
        let origin = loader.gguf.i32s(LAYER_ORIGIN_KEY).ok();
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            let index = origin
                .as_ref()
                .and_then(|o| o.get(i))
                .map_or(i, |&x| x as usize);
            let sliding = !(index + 1).is_multiple_of(SLIDING_WINDOW_PATTERN);
            let norm = |l: &mut Loader<'_>, s: &str| -> std::result::Result<RmsNorm, LoadError> {
                Ok(RmsNorm::new(l.vector(&p(s))?, cfg.rms_eps))
            };
            layers.push(DecoderLayer {
                attn_norm: norm(loader, "attn_norm")?,
                attn: Attention {
                    q: loader.linear(&p("attn_q"))?,
                    k: loader.linear(&p("attn_k"))?,
                    v: loader.linear(&p("attn_v"))?,
                    o: loader.linear(&p("attn_output"))?,
                    q_norm: norm(loader, "attn_q_norm")?,
                    k_norm: norm(loader, "attn_k_norm")?,
                    n_head: cfg.n_head,
                    n_kv_head: cfg.n_kv_head,
                    head_dim: cfg.head_dim,
                    window: if sliding { cfg.sliding_window } else { None },
                },
                post_attn_norm: norm(loader, "post_attention_norm")?,
                ffn_norm: norm(loader, "ffn_norm")?,
                mlp: GatedMlp::load(loader, i, Activation::GeluTanh)?,
                post_ffn_norm: norm(loader, "post_ffw_norm")?,
                cache: KvCache::default(),
            });
        }
        let norm = RmsNorm::new(loader.vector("output_norm.weight")?, cfg.rms_eps);
        let info = ModelInfo {
            architecture: "gemma3".into(),
            n_layer: cfg.n_layer,
            hidden: cfg.hidden,
            vocab,
            context_length: cfg.context_length,
            kv_bytes_per_token: 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * 4,
            weights: loader.stats,
        };
        Ok(Self {
            embed,
            embed_scale: (cfg.hidden as f64).sqrt(),
            layers,
            norm,
            lm_head,
            rope_global: Rope::new(cfg.rope_theta, cfg.head_dim, false)?,
            rope_local: Rope::new(LOCAL_ROPE_BASE, cfg.head_dim, false)?,
            info,
        })
    }
}

impl CausalLm for Model {
    fn forward_hidden(
        &mut self,
        tokens: &[u32],
        span: &Span,
        n_out: usize,
    ) -> Result<Option<Tensor>> {
        // transformers casts the scale to the activation dtype (f32) first.
        let mut x = (self.embed.forward(tokens)? * (self.embed_scale as f32) as f64)?;
        let global_mask = span.mask(None)?;
        let window = self.layers.iter().find_map(|l| l.attn.window);
        let local_mask = span.mask(window)?;
        let (finish, last) = span.finish_last(self.layers.len(), n_out)?;
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let (rope, mask) = if layer.attn.window.is_some() {
                (&mut self.rope_local, local_mask.as_ref())
            } else {
                (&mut self.rope_global, global_mask.as_ref())
            };
            let f = finish.as_ref().filter(|_| i == last);
            let h = layer.attn_norm.forward(&x)?;
            let Some(h) = layer
                .attn
                .forward(&h, rope, &mut layer.cache, span, mask, f)?
            else {
                return Ok(None);
            };
            if let Some(f) = f {
                x = f.select(&x)?;
            }
            x = (x + layer.post_attn_norm.forward(&h)?)?;
            let h = layer.mlp.forward(&layer.ffn_norm.forward(&x)?)?;
            x = (x + layer.post_ffn_norm.forward(&h)?)?;
        }
        crate::backend::candle::nn::head::output_rows(&x, span, n_out, &self.norm, finish.as_ref())
    }

    fn head(&self) -> &Linear {
        &self.lm_head
    }

    fn cache_len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.cache.len())
    }

    fn truncate_cache(&mut self, len: usize) -> Result<()> {
        self.layers
            .iter_mut()
            .try_for_each(|l| l.cache.truncate(len))
    }

    fn info(&self) -> &ModelInfo {
        &self.info
    }
}
