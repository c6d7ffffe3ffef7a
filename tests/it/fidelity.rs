//! Fidelity against lm-evaluation-harness reference outputs
//! (`../shared/reference`): tokenizer ids and per-choice log-likelihoods.

use crate::common;

use slmbench::backend::candle::scorer::CandleScorer;
use slmbench::backend::candle::WeightMode;
use slmbench::backend::Scorer;
use slmbench::model::gguf::GgufFile;
use slmbench::model::tokenizer::TextTokenizer;

const MODELS: [&str; 3] = [
    "smollm2-135m-instruct",
    "gemma3-270m",
    "qwen2.5-coder-1.5b-instruct",
];

#[test]
fn tokenizer_ids_equal_reference_for_all_models() {
    let Some(shared) = common::shared_dir() else {
        return;
    };
    let refs = common::read_jsonl(&shared.join("reference/tokenizer_ids.jsonl"));
    for model in MODELS {
        let g = GgufFile::open(&common::model_path(model)).expect("gguf");
        let tok = TextTokenizer::from_gguf(&g).expect("tokenizer");
        let mut n = 0;
        for r in refs.iter().filter(|r| r["model"] == model) {
            let text = r["text"].as_str().expect("text");
            let want: Vec<u32> = serde_json::from_value(r["ids"].clone()).expect("ids");
            assert_eq!(tok.encode(text).expect("encode"), want, "{model}: {text:?}");
            n += 1;
        }
        assert_eq!(n, 20, "{model}: reference strings");
    }
}

fn scorer(model: &str, mode: WeightMode) -> CandleScorer {
    let mut g = GgufFile::open(&common::model_path(model)).expect("gguf");
    let tok = TextTokenizer::from_gguf(&g).expect("tokenizer");
    let m = slmbench::backend::candle::load(&mut g, mode).expect("load");
    let ctx = m.info().context_length;
    CandleScorer::new(m, tok, ctx)
}

/// Scores the reference's own contexts/continuations; returns (agreeing
/// predictions, documents, largest |Δ log-likelihood|).
fn compare(s: &mut CandleScorer, reference: &std::path::Path, limit: usize) -> (usize, usize, f64) {
    let (mut agree, mut n, mut worst) = (0, 0, 0f64);
    for r in common::read_jsonl(reference).iter().take(limit) {
        let conts: Vec<String> = serde_json::from_value(r["continuations"].clone()).expect("conts");
        let want: Vec<f64> = serde_json::from_value(r["loglikelihoods"].clone()).expect("lls");
        let got = s
            .score_doc(r["context"].as_str().expect("context"), &conts)
            .expect("score");
        let lls: Vec<f64> = got.choices.iter().map(|c| c.loglikelihood).collect();
        let pred = slmbench::metrics::argmax(&lls).expect("pred");
        agree += usize::from(pred as u64 == r["pred"].as_u64().expect("pred"));
        n += 1;
        for (a, b) in lls.iter().zip(&want) {
            worst = worst.max((a - b).abs());
        }
    }
    (agree, n, worst)
}

#[test]
fn smollm2_f32_loglikelihoods_match_reference() {
    let Some(shared) = common::shared_dir() else {
        return;
    };
    let mut s = scorer("smollm2-135m-instruct", WeightMode::F32);
    let dir = shared.join("reference/smollm2-135m-instruct");
    for (task, limit) in [("copa", 100), ("arc_easy", 40), ("mrpc", 40)] {
        let (agree, n, worst) = compare(&mut s, &dir.join(format!("{task}.jsonl")), limit);
        eprintln!("smollm2 f32 {task}: {agree}/{n} agree, max |dll| {worst:.5}");
        assert_eq!(agree, n, "{task}: predictions differ");
        assert!(worst < 0.02, "{task}: max |dll| {worst}");
    }
}

#[test]
fn gemma3_f32_loglikelihoods_match_reference() {
    let Some(shared) = common::shared_dir() else {
        return;
    };
    let mut s = scorer("gemma3-270m", WeightMode::F32);
    let (agree, n, worst) = compare(&mut s, &shared.join("reference/gemma3-270m/copa.jsonl"), 30);
    eprintln!("gemma3 f32 copa: {agree}/{n} agree, max |dll| {worst:.5}");
    assert_eq!(agree, n);
    assert!(worst < 0.02, "max |dll| {worst}");
}

#[test]
fn qwen2_quantized_predictions_match_reference() {
    let Some(shared) = common::shared_dir() else {
        return;
    };
    let mut s = scorer("qwen2.5-coder-1.5b-instruct", WeightMode::Auto);
    let path = shared.join("reference/qwen2.5-coder-1.5b-instruct/copa.jsonl");
    let (agree, n, worst) = compare(&mut s, &path, 20);
    eprintln!("qwen2 quantized copa: {agree}/{n} agree, max |dll| {worst:.5}");
    // Quantized activations move log-likelihoods by up to ~1 nat; near-ties may flip.
    assert!(agree >= n - 2, "{agree}/{n}");
    assert!(worst < 2.0, "max |dll| {worst}");
}

/// Choices that share their first tokens, one that is a prefix of another,
/// one-token choices, two documents that begin alike: scored as prefix
/// trees (several documents packed in one forward, their trees merged; one
/// per forward with their head rows in one pass; one document alone) they
/// equal each choice forwarded on its own after the context, while each
/// shared prefix is forwarded once.
/// In f32: the quantized kernels of few-row forwards round activations, so
/// there the paths differ by design.
#[test]
fn prefix_trees_score_like_each_choice_alone() {
    if common::shared_dir().is_none() {
        return;
    }
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let docs = [
        (
            "The capital of France is",
            strings(&[
                " Paris",
                " Paris, France",
                " the city of Paris",
                " the city of Lyon",
                " Lyon",
            ]),
        ),
        (
            "Question: What do plants need to grow?\nAnswer:",
            strings(&[" sunlight and water", " sunlight", " sand"]),
        ),
        (
            "The man broke his toe because",
            strings(&[
                " he dropped a hammer on his foot.",
                " he got a hole in his sock.",
            ]),
        ),
        // Begins like document 1: in one pack, `Question: What do` is
        // forwarded once for both.
        (
            "Question: What do animals need to live?\nAnswer:",
            strings(&[" food and water", " sunlight"]),
        ),
    ];
    let requests: Vec<(&str, &[String])> = docs.iter().map(|(c, k)| (*c, k.as_slice())).collect();
    let mut worst = 0f64;
    {
        let mut s = scorer("smollm2-135m-instruct", WeightMode::F32);
        let packed = s.score_docs(&requests).expect("packed");
        // One document per forward, their head rows still in one pass.
        s.pack_tokens = 12;
        let apart = s.score_docs(&requests).expect("apart");
        let single: Vec<_> = docs
            .iter()
            .map(|(c, k)| s.score_doc(c, k).expect("single"))
            .collect();
        s.batch_choices = false;
        // Nodes brought by earlier documents of the (one) pack.
        let mut seen = std::collections::HashSet::new();
        for (i, (ctx, conts)) in docs.iter().enumerate() {
            let alone = s.score_doc(ctx, conts).expect("alone");
            // Each distinct prefix of context ++ continuation (less its last token).
            let mut nodes = std::collections::HashSet::new();
            for c in conts {
                let (a, b) =
                    slmbench::backend::request::encode_pair(&s.tokenizer, ctx, c).expect("encode");
                let all: Vec<u32> = a.iter().chain(&b).copied().collect();
                for n in 1..all.len() {
                    nodes.insert(all[..n].to_vec());
                }
            }
            let new = nodes.iter().filter(|n| !seen.contains(*n)).count();
            assert_eq!(packed[i].tokens_forwarded, new, "doc {i} packed");
            assert!(i != 3 || new + 4 <= nodes.len(), "doc 3 shares its start");
            seen.extend(nodes.iter().cloned());
            for got in [&single[i], &apart[i]] {
                assert_eq!(got.tokens_forwarded, nodes.len(), "doc {i}");
            }
            for got in [&packed[i], &single[i], &apart[i]] {
                for (j, (g, w)) in got.choices.iter().zip(&alone.choices).enumerate() {
                    let what = format!("doc {i} choice {j}: {g:?} vs {w:?}");
                    worst = worst.max((g.loglikelihood - w.loglikelihood).abs());
                    assert!((g.loglikelihood - w.loglikelihood).abs() < 2e-4, "{what}");
                    assert_eq!(
                        (g.is_greedy, g.n_tokens),
                        (w.is_greedy, w.n_tokens),
                        "{what}"
                    );
                }
            }
            eprintln!(
                "doc {i}: {} tokens as a tree, {} choice by choice",
                nodes.len(),
                alone.tokens_forwarded
            );
        }
    }
    eprintln!("largest |Δ log-likelihood| {worst:.2e}");
}
