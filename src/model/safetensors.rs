//! Hugging Face checkpoints (a folder with `config.json`, `tokenizer.json`
//! and `*.safetensors`) for llama, qwen2 and gemma3, presented as a
//! [`GgufFile`]: `config.json` becomes GGUF-style metadata and tensors are
//! renamed and converted exactly as llama.cpp's converter does (llama q/k
//! rows permuted for interleaved RoPE, Gemma norm weights shifted by one),
//! so the model files serve both formats unchanged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;

use candle_core::{DType, Device, Tensor};
use serde_json::Value as Json;

use crate::model::file::TensorMap;
use crate::model::gguf::GgufFile;

#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn invalid(path: &Path, message: impl Into<String>) -> SafetensorsError {
    SafetensorsError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Which of our architectures a `config.json` describes, and the text config.
fn architecture(dir: &Path, cfg: &Json) -> Result<(&'static str, Json), SafetensorsError> {
    let model_type = cfg["model_type"].as_str().unwrap_or_default();
    let text = cfg
        .get("text_config")
        .cloned()
        .unwrap_or_else(|| cfg.clone());
    let arch = match model_type {
        "llama" => "llama",
        "qwen2" => "qwen2",
        "gemma3" | "gemma3_text" => "gemma3",
        other => {
            return Err(invalid(
                &dir.join("config.json"),
                format!("field `model_type`: `{other}` is not supported (llama, qwen2, gemma3)"),
            ))
        }
    };
    if !text["rope_scaling"].is_null() {
        return Err(invalid(
            &dir.join("config.json"),
            "field `rope_scaling`: RoPE scaling is not supported yet; use a GGUF of this model",
        ));
    }
    Ok((arch, text))
}

fn meta_u32(m: &mut HashMap<String, Value>, key: String, v: &Json) {
    if let Some(x) = v.as_u64() {
        m.insert(key, Value::U32(x as u32));
    }
}

fn meta_f32(m: &mut HashMap<String, Value>, key: String, v: &Json) {
    if let Some(x) = v.as_f64() {
        m.insert(key, Value::F32(x as f32));
    }
}

/// llama.cpp's tensor name for a Hugging Face one (`None`: not used).
fn gguf_name(arch: &str, hf: &str) -> Option<String> {
    let hf = hf
        .strip_prefix("language_model.")
        .or_else(|| hf.strip_prefix("model.language_model."))
        .map(|s| {
            if s.starts_with("model.") || s.starts_with("lm_head") {
                s.to_string()
            } else {
                format!("model.{s}")
            }
        })
        .unwrap_or_else(|| hf.to_string());
    match hf.as_str() {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (i, part) = rest.split_once('.')?;
    let (module, kind) = part.rsplit_once('.')?;
    let gemma = arch == "gemma3";
    let name = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" if gemma => "post_attention_norm",
        "post_attention_layernorm" => "ffn_norm",
        "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{i}.{name}.{kind}"))
}

/// llama.cpp's `permute`: Hugging Face's half-split q/k rows to the
/// interleaved layout its llama RoPE expects.
pub fn permute_qk(w: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let shape = w.dims().to_vec();
    let rows = shape[0];
    let mut s = vec![n_head, 2, rows / n_head / 2];
    s.extend_from_slice(&shape[1..]);
    w.reshape(s)?.transpose(1, 2)?.contiguous()?.reshape(shape)
}

/// The inverse of [`permute_qk`] (transformers' `reverse_permute`).
pub fn unpermute_qk(w: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let shape = w.dims().to_vec();
    let rows = shape[0];
    let mut s = vec![n_head, rows / n_head / 2, 2];
    s.extend_from_slice(&shape[1..]);
    w.reshape(s)?.transpose(1, 2)?.contiguous()?.reshape(shape)
}

/// Opens a checkpoint folder as a model file.
pub fn open_dir(dir: &Path) -> Result<GgufFile, SafetensorsError> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path)
        .map_err(|e| invalid(&cfg_path, format!("cannot read: {e} (a safetensors model is a folder with config.json, tokenizer.json and *.safetensors)")))?;
    let cfg: Json = serde_json::from_str(&text)
        .map_err(|e| invalid(&cfg_path, format!("not valid JSON: {e}")))?;
    let (arch, t) = architecture(dir, &cfg)?;
    let mut m: HashMap<String, Value> = HashMap::new();
    m.insert("general.architecture".into(), Value::String(arch.into()));
    let k = |s: &str| format!("{arch}.{s}");
    meta_u32(&mut m, k("block_count"), &t["num_hidden_layers"]);
    meta_u32(&mut m, k("embedding_length"), &t["hidden_size"]);
    meta_u32(&mut m, k("feed_forward_length"), &t["intermediate_size"]);
    meta_u32(&mut m, k("attention.head_count"), &t["num_attention_heads"]);
    meta_u32(
        &mut m,
        k("attention.head_count_kv"),
        &t["num_key_value_heads"],
    );
    meta_u32(&mut m, k("attention.key_length"), &t["head_dim"]);
    meta_u32(&mut m, k("context_length"), &t["max_position_embeddings"]);
    meta_u32(&mut m, k("attention.sliding_window"), &t["sliding_window"]);
    meta_f32(
        &mut m,
        k("attention.layer_norm_rms_epsilon"),
        &t["rms_norm_eps"],
    );
    meta_f32(&mut m, k("rope.freq_base"), &t["rope_theta"]);
    for key in ["block_count", "embedding_length", "attention.head_count"] {
        if !m.contains_key(&k(key)) {
            return Err(invalid(&cfg_path, format!("missing field for `{key}`")));
        }
    }
    // lm-eval adds BOS only for Gemma; the token ids come from the config.
    m.insert(
        "tokenizer.ggml.add_bos_token".into(),
        Value::Bool(arch == "gemma3"),
    );
    meta_u32(
        &mut m,
        "tokenizer.ggml.bos_token_id".into(),
        &cfg["bos_token_id"],
    );
    meta_u32(
        &mut m,
        "tokenizer.ggml.bos_token_id".into(),
        &t["bos_token_id"],
    );
    meta_u32(
        &mut m,
        "tokenizer.ggml.eos_token_id".into(),
        &t["eos_token_id"],
    );

    let n_head = t["num_attention_heads"].as_u64().unwrap_or(1) as usize;
    let n_kv = t["num_key_value_heads"]
        .as_u64()
        .map_or(n_head, |x| x as usize);
    let tie = cfg["tie_word_embeddings"].as_bool().unwrap_or(true);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| invalid(dir, format!("cannot list: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(invalid(dir, "no *.safetensors files in the folder"));
    }
    let mut tensors = HashMap::new();
    let mut file_bytes = 0;
    for f in &files {
        file_bytes += std::fs::metadata(f).map(|x| x.len()).unwrap_or(0);
        let loaded = candle_core::safetensors::load(f, &Device::Cpu)
            .map_err(|e| invalid(f, format!("not a readable safetensors file: {e}")))?;
        for (hf, w) in loaded {
            let Some(name) = gguf_name(arch, &hf) else {
                continue;
            };
            if name == "output.weight" && tie {
                continue;
            }
            let conv = |w: Tensor| -> candle_core::Result<Tensor> {
                let w = w.to_dtype(DType::F32)?;
                if arch == "llama" && name.ends_with("attn_q.weight") {
                    permute_qk(&w, n_head)
                } else if arch == "llama" && name.ends_with("attn_k.weight") {
                    permute_qk(&w, n_kv)
                } else if arch == "gemma3" && name.ends_with("norm.weight") {
                    w + 1.0
                } else {
                    Ok(w)
                }
            };
            let w = conv(w).map_err(|e| invalid(f, format!("tensor `{hf}`: {e}")))?;
            tensors.insert(name, w);
        }
    }
    Ok(GgufFile::from_parts(
        dir.to_path_buf(),
        m,
        TensorMap {
            tensors,
            file_bytes,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_like_llama_cpp() {
        assert_eq!(
            gguf_name("llama", "model.layers.3.self_attn.q_proj.weight").as_deref(),
            Some("blk.3.attn_q.weight")
        );
        assert_eq!(
            gguf_name("llama", "model.layers.0.post_attention_layernorm.weight").as_deref(),
            Some("blk.0.ffn_norm.weight")
        );
        assert_eq!(
            gguf_name("gemma3", "model.layers.0.post_attention_layernorm.weight").as_deref(),
            Some("blk.0.post_attention_norm.weight")
        );
        assert_eq!(
            gguf_name("gemma3", "language_model.model.layers.1.mlp.up_proj.weight").as_deref(),
            Some("blk.1.ffn_up.weight")
        );
        assert_eq!(
            gguf_name("qwen2", "model.layers.2.self_attn.k_proj.bias").as_deref(),
            Some("blk.2.attn_k.bias")
        );
        assert_eq!(gguf_name("llama", "model.rotary_emb.inv_freq"), None);
    }

    #[test]
    fn permute_round_trips() {
        let w = Tensor::arange(0f32, 48.0, &Device::Cpu)
            .and_then(|t| t.reshape((8, 6)))
            .expect("t");
        let p = permute_qk(&w, 2).expect("permute");
        assert_ne!(
            p.to_vec2::<f32>().expect("v"),
            w.to_vec2::<f32>().expect("v")
        );
        let back = unpermute_qk(&p, 2).expect("unpermute");
        assert_eq!(
            back.to_vec2::<f32>().expect("v"),
            w.to_vec2::<f32>().expect("v")
        );
        // Row order within a head: [0, 2, 1, 3] for head_dim 4.
        let rows: Vec<f32> = p
            .to_vec2::<f32>()
            .expect("v")
            .iter()
            .map(|r| r[0])
            .collect();
        assert_eq!(rows, vec![0.0, 12.0, 6.0, 18.0, 24.0, 36.0, 30.0, 42.0]);
    }
}
