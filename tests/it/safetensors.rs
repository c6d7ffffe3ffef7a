//! A Hugging Face safetensors folder scores like the GGUF it came from:
//! the SmolLM2 GGUF is written out as a transformers-layout checkpoint
//! (names, un-permuted q/k, config.json, tokenizer.json) and loaded back
//! through `format: safetensors`.

use crate::common;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use slmbench::backend::candle::scorer::CandleScorer;
use slmbench::backend::candle::WeightMode;
use slmbench::backend::Scorer;
use slmbench::model::gguf::GgufFile;
use slmbench::spec::models::Registry;

fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (i, part) = rest.split_once('.')?;
    let (module, kind) = part.rsplit_once('.')?;
    let m = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{i}.{m}.{kind}"))
}

#[test]
fn safetensors_folder_scores_like_its_gguf() {
    if common::shared_dir().is_none() {
        return;
    }
    let gguf_path = common::model_path("smollm2-135m-instruct");
    let mut g = GgufFile::open(&gguf_path).expect("gguf");
    let names: Vec<String> = [
        "token_embd.weight".to_string(),
        "output_norm.weight".to_string(),
    ]
    .into_iter()
    .chain((0..30).flat_map(|i| {
        [
            "attn_norm",
            "ffn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ]
        .map(|m| format!("blk.{i}.{m}.weight"))
    }))
    .collect();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for n in &names {
        let t = g
            .tensor(n)
            .expect("tensor")
            .dequantize(&Device::Cpu)
            .expect("f32");
        let t = if n.ends_with("attn_q.weight") {
            slmbench::model::safetensors::unpermute_qk(&t, 9).expect("unpermute")
        } else if n.ends_with("attn_k.weight") {
            slmbench::model::safetensors::unpermute_qk(&t, 3).expect("unpermute")
        } else {
            t
        };
        tensors.insert(hf_name(n).expect("name"), t);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let ckpt = dir.path().join("smollm2-hf");
    std::fs::create_dir_all(&ckpt).expect("mkdir");
    candle_core::safetensors::save(&tensors, ckpt.join("model.safetensors")).expect("save");
    let config = serde_json::json!({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0, "max_position_embeddings": 8192, "rope_scaling": null,
        "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2
    });
    std::fs::write(ckpt.join("config.json"), config.to_string()).expect("config");
    let tok_json =
        slmbench::model::tokenizer::tokenizer_json_from_gguf(&g).expect("tokenizer json");
    std::fs::write(ckpt.join("tokenizer.json"), tok_json.to_string()).expect("tokenizer");

    let reg = Registry::parse(
        &format!(
            "models:\n  hf:\n    format: safetensors\n    file: smollm2-hf\n    sources:\n      - path: {}\n",
            ckpt.display()
        ),
        "test.yaml",
    )
    .expect("registry");
    let mut opts = slmbench::model::fetch::FetchOptions::from_env();
    opts.offline = true;
    let path = slmbench::obtain::obtain(&reg, "hf", dir.path(), &opts)
        .expect("obtain")
        .path;
    let (mut hf, tok) =
        slmbench::model::open::open_model(reg.get("hf").expect("spec"), &path).expect("open");
    assert_eq!(hf.architecture().expect("arch"), "llama");
    let m = slmbench::backend::candle::load(&mut hf, WeightMode::F32).expect("load hf");
    let mut from_hf = CandleScorer::new(m, tok, 8192);

    let mut g = GgufFile::open(&gguf_path).expect("gguf");
    let tok = slmbench::model::tokenizer::TextTokenizer::from_gguf(&g).expect("tokenizer");
    let m = slmbench::backend::candle::load(&mut g, WeightMode::F32).expect("load gguf");
    let mut from_gguf = CandleScorer::new(m, tok, 8192);

    let conts = vec![
        " the water boiled.".to_string(),
        " the water froze.".to_string(),
    ];
    let a = from_hf
        .score_doc("The kettle whistled because", &conts)
        .expect("hf");
    let b = from_gguf
        .score_doc("The kettle whistled because", &conts)
        .expect("gguf");
    for (x, y) in a.choices.iter().zip(&b.choices) {
        assert!(
            (x.loglikelihood - y.loglikelihood).abs() < 1e-3,
            "{x:?} vs {y:?}"
        );
        assert_eq!(x.n_tokens, y.n_tokens);
    }
}
