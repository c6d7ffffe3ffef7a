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
