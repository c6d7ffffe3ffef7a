//! The trainable llama forward (`variant::distill`) against the scoring
//! engine on real weights: the same logits from the same file.

use crate::common;

use slmbench::backend::candle::{load, WeightMode};
use slmbench::model::gguf::GgufFile;
use slmbench::variant::distill::Student;
use slmbench::variant::tensors::Working;

/// SmolLM2-135M (llama, 30 blocks, Q4_1 dequantized to f32), 24 tokens:
/// the student's next-token log-probabilities equal the engine's f32 path
/// within 2e-3 nats and pick the same argmax everywhere. Both compute in
/// f32 with different summation orders (fused kernels vs elementary ops);
/// relative rounding of ~1e-6 per op over 30 blocks on logits of size
/// ~20 stays well under that bound, while a wrong rotary layout or a
/// missing norm moves log-probabilities by whole nats.
#[test]
fn the_trainable_forward_matches_the_engine_on_smollm2() {
    let path = common::model_path("smollm2-135m-instruct");
    let mut gguf = GgufFile::open(&path).expect("gguf");
    let (working, _) = Working::load(&mut gguf).expect("working set");
    let student = Student::from_working(&working, candle_core::DType::F32).expect("student");
    let mut gguf = GgufFile::open(&path).expect("gguf");
    let mut engine = load(&mut gguf, WeightMode::F32).expect("engine");
    let tokens: Vec<u32> = vec![
        1, 504, 3458, 282, 4649, 314, 2491, 30, 378, 1120, 1689, 28, 291, 253, 5629, 282, 260,
        1694, 30, 657, 9509, 314, 1183, 30,
    ];
    let log_softmax = |t: &candle_core::Tensor| -> Vec<Vec<f32>> {
        let m = t.max_keepdim(1).expect("max");
        let s = t.broadcast_sub(&m).expect("sub");
        let lse = s
            .exp()
            .and_then(|e| e.sum_keepdim(1))
            .and_then(|x| x.log())
            .expect("lse");
        s.broadcast_sub(&lse)
            .and_then(|x| x.to_vec2())
            .expect("vec")
    };
    let a = log_softmax(&student.forward(&tokens).expect("student forward"));
    let b = log_softmax(
        &engine
            .forward(&tokens, tokens.len())
            .expect("engine forward")
            .expect("logits"),
    );
    let argmax = |v: &[f32]| {
        v.iter()
            .enumerate()
            .max_by(|x, y| x.1.total_cmp(y.1))
            .map(|(i, _)| i)
    };
    let mut worst = 0f32;
    for (p, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(argmax(x), argmax(y), "position {p}");
        // The log-probabilities that matter: the top 50 of the engine's.
        let mut top: Vec<usize> = (0..y.len()).collect();
        top.sort_by(|i, j| y[*j].total_cmp(&y[*i]));
        for &i in &top[..50] {
            worst = worst.max((x[i] - y[i]).abs());
        }
    }
    eprintln!("largest |Δ log-prob| over the top 50 of 24 positions: {worst:.2e}");
    assert!(worst < 2e-3, "{worst}");
}

/// By hand: SmolLM2's f32 dequantization without blocks 24–27 (drop4's
/// structure) distilled from the whole model on ARC-Easy train questions
/// with their answers; prints the mean KL to the teacher on held-out
/// ARC-Easy validation questions before and after. `STEPS` (default 60),
/// `LR` (default 5e-5). Run with
/// `cargo test --release --test it distill::drop4 -- --ignored --nocapture`.
#[test]
#[ignore = "minutes of training; prints figures"]
fn drop4_distilled_from_f32_on_arc_train() {
    use slmbench::variant::distill::{distill, distill_loss, TrainOptions};
    let Some(shared) = common::shared_dir() else {
        return;
    };
    let env = |k: &str, d: f64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let path = common::model_path("smollm2-135m-instruct");
    let mut gguf = GgufFile::open(&path).expect("gguf");
    let tok = slmbench::model::tokenizer::TextTokenizer::from_gguf(&gguf).expect("tokenizer");
    let (working, _) = Working::load(&mut gguf).expect("working set");
    let teacher = Student::from_working(&working, candle_core::DType::F32).expect("teacher");
    let mut student = Student::from_working(&working, candle_core::DType::F32).expect("student");
    for i in [27usize, 26, 25, 24] {
        student.blocks.remove(i);
    }
    student.cfg.layers = student.blocks.len();
    let render = |file: &str, n: usize| -> Vec<Vec<u32>> {
        common::read_jsonl(&shared.join("data/allenai/ai2_arc/ARC-Easy").join(file))
            .iter()
            .take(n)
            .map(|d| {
                let labels = d["choices"]["label"].as_array().expect("labels");
                let gold = labels
                    .iter()
                    .position(|l| l == &d["answerKey"])
                    .expect("answer");
                let text = format!(
                    "Question: {}\nAnswer: {}",
                    d["question"].as_str().expect("q"),
                    d["choices"]["text"][gold].as_str().expect("a")
                );
                let mut ids = tok.encode(&text).expect("encode");
                ids.truncate(64);
                ids
            })
            .collect()
    };
    let (train, held) = (render("train.jsonl", 400), render("validation.jsonl", 50));
    let kl = |s: &Student| -> f64 {
        held.iter()
            .map(|q| {
                let a = s.forward(q).expect("student");
                let b = teacher.forward(q).expect("teacher");
                distill_loss(&a, &b, 1.0, 1.0, &[])
                    .and_then(|l| l.to_scalar::<f32>())
                    .expect("kl") as f64
            })
            .sum::<f64>()
            / held.len() as f64
    };
    let before = kl(&student);
    let opts = TrainOptions {
        steps: env("STEPS", 60.0) as usize,
        batch: 4,
        lr: env("LR", 5e-5),
        temperature: 1.0,
        alpha: 1.0,
        seed: 1,
    };
    let masks = student.vars().iter().map(|_| None).collect();
    let t0 = std::time::Instant::now();
    let report = distill(&student, &teacher, &train, masks, &opts, &mut |s, l| {
        if s % 10 == 0 {
            eprintln!(
                "step {s}: loss {l:.4} ({:.0} s)",
                t0.elapsed().as_secs_f64()
            );
        }
    })
    .expect("train");
    let after = kl(&student);
    println!(
        "drop4 student: held-out KL to the f32 teacher {before:.4} → {after:.4} nats ({:+.1}%) after {} steps × {} sequences ({} tokens, {:.0} s, lr {})",
        (after / before - 1.0) * 100.0,
        opts.steps,
        opts.batch,
        report.tokens_seen,
        report.wall_time_s,
        opts.lr
    );
}
