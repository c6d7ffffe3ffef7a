//! Llama-family decoder (also serves Qwen2, which adds q/k/v biases and uses
//! NeoX-style RoPE): an all-positions forward with a truncatable KV cache.
//!
//! GGUF tensor names follow llama.cpp: `token_embd`, `blk.N.attn_{q,k,v,output}`,
//! `blk.N.ffn_{gate,up,down}`, `blk.N.{attn,ffn}_norm`, `output_norm`, `output`.

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

/// Hyper-parameters read from GGUF metadata under the architecture's prefix.
#[derive(Debug, Clone)]
pub struct Config {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub hidden: usize,
    pub rms_eps: f32,
    pub rope_theta: f64,
    /// llama.cpp's converter permutes llama q/k weights for interleaved RoPE;
    /// Qwen2 keeps the NeoX (half-split) layout.
    pub rope_interleaved: bool,
    pub context_length: usize,
}

impl Config {
    pub fn from_gguf(loader: &Loader<'_>, arch: &str) -> std::result::Result<Self, LoadError> {
        let g = &*loader.gguf;
        let key = |k: &str| format!("{arch}.{k}");
        let hidden = g.u32(&key("embedding_length"))? as usize;
        let n_head = g.u32(&key("attention.head_count"))? as usize;
        let n_kv_head = g
            .opt_u32(&key("attention.head_count_kv"))
            .map(|x| x as usize)
            .unwrap_or(n_head);
        let head_dim = g
            .opt_u32(&key("attention.key_length"))
            .map(|x| x as usize)
            .unwrap_or(hidden / n_head);
        Ok(Self {
            n_layer: g.u32(&key("block_count"))? as usize,
            n_head,
            n_kv_head,
            head_dim,
            hidden,
            rms_eps: g.f32(&key("attention.layer_norm_rms_epsilon"))?,
            rope_theta: g.opt_f32(&key("rope.freq_base")).unwrap_or(10_000.0) as f64,
            rope_interleaved: arch == "llama",
            context_length: g.opt_u32(&key("context_length")).unwrap_or(2048) as usize,
        })
    }
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
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
            y.reshape((b, t, n, self.head_dim))?.transpose(1, 2)
        };
        let k = heads(self.k.forward(x)?, self.n_kv_head)?;
        let v = heads(self.v.forward(x)?, self.n_kv_head)?;
        let (k, v) = rope_cache(&k, &v, rope, cache, span)?;
        let Some((x, queries, mask)) = Finish::queries_of(finish, x, span, mask)? else {
            return Ok(None);
        };
        let q = heads(self.q.forward(&x)?, self.n_head)?;
        let y = rope_attend(&q, &k, &v, rope, queries, mask.as_ref())?;
        self.o.forward(&y).map(Some)
    }
}

struct DecoderLayer {
    attn_norm: RmsNorm,
    attn: Attention,
    ffn_norm: RmsNorm,
    mlp: GatedMlp,
    cache: KvCache,
}

/// A Llama/Qwen2 causal language model.
pub struct Model {
    embed: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    info: ModelInfo,
}

impl Model {
    pub fn load(loader: &mut Loader<'_>, arch: &str) -> std::result::Result<Self, LoadError> {
        let cfg = Config::from_gguf(loader, arch)?;
        let (embed, lm_head, vocab) =
            crate::backend::candle::nn::loader::embedding_and_head(loader)?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            layers.push(DecoderLayer {
                attn_norm: RmsNorm::new(loader.vector(&p("attn_norm"))?, cfg.rms_eps),
                attn: Attention {
                    q: loader.linear(&p("attn_q"))?,
                    k: loader.linear(&p("attn_k"))?,
                    v: loader.linear(&p("attn_v"))?,
                    o: loader.linear(&p("attn_output"))?,
                    n_head: cfg.n_head,
                    n_kv_head: cfg.n_kv_head,
                    head_dim: cfg.head_dim,
                },
                ffn_norm: RmsNorm::new(loader.vector(&p("ffn_norm"))?, cfg.rms_eps),
                mlp: GatedMlp::load(loader, i, Activation::Silu)?,
                cache: KvCache::default(),
            });
        }
        let norm = RmsNorm::new(loader.vector("output_norm.weight")?, cfg.rms_eps);
        let info = ModelInfo {
            architecture: arch.to_string(),
            n_layer: cfg.n_layer,
            hidden: cfg.hidden,
            vocab,
            context_length: cfg.context_length,
            kv_bytes_per_token: 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * 4,
            weights: loader.stats,
        };
        Ok(Self {
            embed,
            layers,
            norm,
            lm_head,
            rope: Rope::new(cfg.rope_theta, cfg.head_dim, cfg.rope_interleaved)?,
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
        let mut x = self.embed.forward(tokens)?;
        let mask = span.mask(None)?;
        let (finish, last) = span.finish_last(self.layers.len(), n_out)?;
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let f = finish.as_ref().filter(|_| i == last);
            let h = layer.attn_norm.forward(&x)?;
            let rope = &mut self.rope;
            let Some(h) = layer
                .attn
                .forward(&h, rope, &mut layer.cache, span, mask.as_ref(), f)?
            else {
                return Ok(None);
            };
            if let Some(f) = f {
                x = f.select(&x)?;
            }
            x = (x + h)?;
            let h = layer.mlp.forward(&layer.ffn_norm.forward(&x)?)?;
            x = (x + h)?;
        }
        crate::backend::candle::nn::head::output_rows(&x, span, n_out, &self.norm, finish.as_ref())
    }

    fn head(&self) -> &Linear {
        &self.lm_head
    }

    fn cache_len(&self) -> usize {
        self.layers.first().map(|l| l.cache.len()).unwrap_or(0)
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
