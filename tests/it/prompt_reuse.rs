//! Prompt reuse in local generation: a prompt that begins like the last one
//! forwards only what follows their shared whole chunks, and computes the
//! same bits as a fresh forward — so a document's generation does not
//! depend on which document came before it (nor on `--resume`).
//!
//! On SmolLM2's real weights, in both weight modes, with two prompts that
//! put the same five GSM8K examples before different questions (what a task
//! with a fixed few-shot prefix sends; lm-eval's own gsm8k draws other
//! examples for each document): the logits after a reused prefix equal a
//! fresh forward's bit for bit, and generating the second prompt after the
//! first gives what it gives alone, having reused every whole chunk of the
//! shared prefix.

use candle_core::Tensor;
use slmbench::backend::candle::scorer::CandleScorer;
use slmbench::backend::candle::{load, CausalLm, WeightMode};
use slmbench::backend::{GenRequest, Generation, Scorer};
use slmbench::model::gguf::GgufFile;
use slmbench::model::tokenizer::TextTokenizer;

use crate::common::{model_path, read_jsonl, shared_dir};

fn scorer(mode: WeightMode) -> CandleScorer {
    let path = model_path("smollm2-135m-instruct");
    let mut g = GgufFile::open(&path).expect("gguf");
    let tok = TextTokenizer::from_gguf(&g).expect("tokenizer");
    let model = load(&mut g, mode).expect("model");
    CandleScorer::new(model, tok, 2048)
}

/// The logits of `ids`' last token, `ids[from..]` forwarded in `chunk`s
/// after whatever the cache holds.
fn last_logits(m: &mut dyn CausalLm, ids: &[u32], from: usize, chunk: usize) -> Vec<f32> {
    let rest = &ids[from..];
    let n = rest.len().div_ceil(chunk);
    let mut out: Option<Tensor> = None;
    for (i, piece) in rest.chunks(chunk).enumerate() {
        out = m.forward(piece, usize::from(i + 1 == n)).expect("forward");
    }
    out.expect("logits")
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .expect("vec")
}

fn one(s: &mut CandleScorer, prompt: &str, until: &[String]) -> Generation {
    let req = GenRequest {
        prompt,
        until,
        max_gen_toks: 48,
        messages: None,
    };
    s.generate(std::slice::from_ref(&req))
        .expect("generate")
        .pop()
        .expect("one generation")
}

#[test]
fn a_reused_prompt_prefix_computes_the_bits_of_a_fresh_forward() {
    let Some(shared) = shared_dir() else { return };
    let rows = read_jsonl(&shared.join("reference/smollm2-135m-instruct/gsm8k.jsonl"));
    let prompt = |i: usize| rows[i]["prompt"].as_str().expect("prompt").to_string();
    // Document 0's five examples, then document 0's or document 1's question.
    let question = |p: &str| p[p.rfind("Question:").expect("a question")..].to_string();
    let p = prompt(0);
    let examples = &p[..p.len() - question(&p).len()];
    let (p0, p1) = (
        format!("{examples}{}", question(&p)),
        format!("{examples}{}", question(&prompt(1))),
    );
    let until: Vec<String> = ["Question:", "</s>", "<|im_end|>"]
        .map(String::from)
        .to_vec();
    for mode in [WeightMode::Auto, WeightMode::F32] {
        let mut s = scorer(mode);
        let chunk = s.gen_chunk;
        assert!(chunk > 0);
        let a = s.tokenizer.encode(&p0).expect("encode");
        let b = s.tokenizer.encode(&p1).expect("encode");
        let shared_len = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        let reuse = shared_len / chunk * chunk;
        assert!(
            reuse >= chunk,
            "the 5-shot prefix ({shared_len} tokens) spans a whole chunk"
        );
        // Fresh, then after prompt 0 cut back to the shared whole chunks.
        let m = s.model.as_mut();
        m.truncate_cache(0).expect("truncate");
        let fresh = last_logits(m, &b, 0, chunk);
        m.truncate_cache(0).expect("truncate");
        last_logits(m, &a, 0, chunk);
        m.truncate_cache(reuse).expect("truncate");
        let reused = last_logits(m, &b, reuse, chunk);
        let same = fresh
            .iter()
            .zip(&reused)
            .all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{mode:?}: the reused prefix changed the logits");
        m.truncate_cache(0).expect("truncate");

        // Through generate: document 1 alone, then after document 0.
        let alone = one(&mut scorer(mode), &p1, &until);
        assert_eq!(alone.cached_tokens, 0);
        let first = one(&mut s, &p0, &until);
        assert_eq!(first.cached_tokens, 0, "{mode:?}: an empty cache");
        let after = one(&mut s, &p1, &until);
        assert_eq!(after.cached_tokens, reuse, "{mode:?}");
        assert_eq!(after.prompt_tokens, b.len());
        assert_eq!(after.text, alone.text, "{mode:?}");
        assert_eq!(after.generated_tokens, alone.generated_tokens);
        // The same prompt again: everything but its last chunk's worth.
        let again = one(&mut s, &p1, &until);
        assert_eq!(again.cached_tokens, (b.len() - 1) / chunk * chunk);
        assert_eq!(again.text, alone.text, "{mode:?}");
        // Scoring in between empties the cache: nothing is reused after it.
        s.score_doc("Question: 1+1?", &[" 2".to_string()])
            .expect("score");
        let fresh_again = one(&mut s, &p1, &until);
        assert_eq!(fresh_again.cached_tokens, 0, "{mode:?}");
        assert_eq!(fresh_again.text, alone.text, "{mode:?}");
    }
}
