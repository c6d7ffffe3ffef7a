//! The trainable llama forward (`variant::distill`) against the scoring
//! engine on real weights: the same logits from the same file.

use crate::common;

use slmbench::backend::candle::{load, WeightMode};
use slmbench::model::gguf::GgufFile;
use slmbench::variant::distill::Student;
use slmbench::variant::tensors::Working;

/// Next-token log-probabilities `[t][vocab]` of `logits`.
fn log_softmax(t: &candle_core::Tensor) -> Vec<Vec<f32>> {
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
}

/// The trainable forward and the engine's f32 path on the GGUF at `path`:
/// the same argmax everywhere, and the largest |Δ log-prob| over each
/// position's top 50 (of the engine's) is returned.
fn student_vs_engine(path: &std::path::Path, tokens: &[u32]) -> f32 {
    let mut gguf = GgufFile::open(path).expect("gguf");
    let (working, _) = Working::load(&mut gguf).expect("working set");
    let student = Student::from_working(&working, candle_core::DType::F32).expect("student");
    let mut gguf = GgufFile::open(path).expect("gguf");
    let mut engine = load(&mut gguf, WeightMode::F32).expect("engine");
    let a = log_softmax(&student.forward(tokens).expect("student forward"));
    let b = log_softmax(
        &engine
            .forward(tokens, tokens.len())
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
        // A NaN would slip past max() below.
        assert!(
            x.iter().chain(y).all(|v| v.is_finite()),
            "position {p}: not finite"
        );
        assert_eq!(argmax(x), argmax(y), "position {p}");
        let mut top: Vec<usize> = (0..y.len()).collect();
        top.sort_by(|i, j| y[*j].total_cmp(&y[*i]));
        for &i in &top[..50.min(top.len())] {
            worst = worst.max((x[i] - y[i]).abs());
        }
    }
    worst
}

/// SmolLM2-135M (llama, 30 blocks, Q4_1 dequantized to f32), 24 tokens:
/// the student's next-token log-probabilities equal the engine's f32 path
/// within 2e-3 nats and pick the same argmax everywhere. Both compute in
/// f32 with different summation orders (fused kernels vs elementary ops);
/// relative rounding of ~1e-6 per op over 30 blocks on logits of size
/// ~20 stays well under that bound, while a wrong rotary layout or a
/// missing norm moves log-probabilities by whole nats.
#[test]
fn the_trainable_forward_matches_the_engine_on_smollm2() {
    let tokens: Vec<u32> = vec![
        1, 504, 3458, 282, 4649, 314, 2491, 30, 378, 1120, 1689, 28, 291, 253, 5629, 282, 260,
        1694, 30, 657, 9509, 314, 1183, 30,
    ];
    let worst = student_vs_engine(&common::model_path("smollm2-135m-instruct"), &tokens);
    eprintln!("smollm2: largest |Δ log-prob| over the top 50 of 24 positions: {worst:.2e}");
    assert!(worst < 2e-3, "{worst}");
}

/// Gemma 3 270M (scaled embedding, q/k norms, post-norms, GELU, local and
/// global rotary bases, head width 256 ≠ hidden / heads): the same check,
/// same bound and reasoning (18 blocks), BOS first as Gemma wants.
#[test]
fn the_trainable_forward_matches_the_engine_on_gemma3() {
    let tokens: Vec<u32> = vec![
        2, 818, 5279, 529, 7001, 563, 9079, 236761, 669, 2269, 563, 496, 3404, 529, 506, 4109,
    ];
    let worst = student_vs_engine(&common::model_path("gemma3-270m"), &tokens);
    eprintln!("gemma3: largest |Δ log-prob| over the top 50 of 16 positions: {worst:.2e}");
    assert!(worst < 2e-3, "{worst}");
}

/// Qwen2 (q/k/v biases, half-split rotary, untied head), Gemma 3 with a
/// sliding window shorter than the sequence and one global block, and a
/// llama with low-rank factor pairs (`.lr_a`/`.lr_b`): small
/// random models written as GGUF files, read by the engine and by the
/// trainable forward, give the same log-probabilities within 1e-3 nats:
/// f32 rounding (~1e-7 relative per op) in different summation orders
/// over up to six blocks, on logits of order 100 with these enlarged
/// weights, gives ~1e-4; a wrong step (a missing bias, norm or window, the
/// wrong rotary base) moves them by far more.
#[test]
fn the_trainable_forward_matches_the_engine_on_small_qwen2_and_gemma3() {
    use candle_core::quantized::gguf_file::Value;
    use candle_core::{Device, Var};
    use slmbench::variant::distill::Config;
    use slmbench::variant::tensors::WTensor;
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens: Vec<u32> = vec![3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8];
    for (arch, layers, key_length, window) in [
        ("qwen2", 2, None, None),
        ("gemma3", 6, Some(12), Some(3)),
        ("llama", 2, None, None),
    ] {
        let gemma = arch == "gemma3";
        let cfg = Config {
            vocab: 40,
            hidden: 16,
            layers,
            heads: 4,
            kv_heads: 2,
            ffn: 24,
            rope_theta: 1e6,
            rms_eps: 1e-6,
            tied_head: gemma,
            rope_interleaved: false,
            key_length,
            ..Default::default()
        };
        let hd = key_length.unwrap_or(4);
        let mut s = Student::random(cfg, 5, candle_core::DType::F32).expect("random");
        // Fixed pseudo-random values (the test must not vary between runs).
        let mut k = 0f32;
        let mut rnd = |shape: &[usize]| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|_| {
                    k += 1.0;
                    0.5 * (k * 1.618).sin()
                })
                .collect();
            Var::from_tensor(&candle_core::Tensor::from_vec(v, shape, &Device::Cpu).expect("t"))
                .expect("var")
        };
        for b in &mut s.blocks {
            if arch == "llama" {
                // Low-rank (rank 3) attn_q and ffn_down, as `low_rank` writes them.
                b.wq = rnd(&[3, 16]);
                b.extra.lr_b.insert("attn_q".into(), rnd(&[16, 3]));
                b.down = rnd(&[3, 24]);
                b.extra.lr_b.insert("ffn_down".into(), rnd(&[16, 3]));
            } else if gemma {
                b.extra.q_norm = Some(rnd(&[hd]));
                b.extra.k_norm = Some(rnd(&[hd]));
                b.extra.post_attn_norm = Some(rnd(&[16]));
                b.extra.post_ffn_norm = Some(rnd(&[16]));
            } else {
                b.extra.bq = Some(rnd(&[4 * hd]));
                b.extra.bk = Some(rnd(&[2 * hd]));
                b.extra.bv = Some(rnd(&[2 * hd]));
            }
        }
        let mut metadata = std::collections::BTreeMap::new();
        let u = |v: usize| Value::U32(v as u32);
        metadata.insert(
            "general.architecture".to_string(),
            Value::String(arch.into()),
        );
        for (k, v) in [
            ("block_count", u(layers)),
            ("embedding_length", u(16)),
            ("feed_forward_length", u(24)),
            ("attention.head_count", u(4)),
            ("attention.head_count_kv", u(2)),
            ("attention.layer_norm_rms_epsilon", Value::F32(1e-6)),
            ("rope.freq_base", Value::F32(1e6)),
            ("context_length", u(64)),
        ] {
            metadata.insert(format!("{arch}.{k}"), v);
        }
        if let Some(k) = key_length {
            metadata.insert(format!("{arch}.attention.key_length"), u(k));
            metadata.insert(format!("{arch}.attention.value_length"), u(k));
        }
        if let Some(w) = window {
            metadata.insert(format!("{arch}.attention.sliding_window"), u(w));
        }
        let mut tensors = std::collections::BTreeMap::new();
        for (name, v) in s.named_vars() {
            // Larger weights than the init's, so the distributions are far
            // from uniform and a wrong step shows.
            let t = (v.as_tensor() * 6.0).expect("scale");
            tensors.insert(name, WTensor::dense(t));
        }
        let w = Working {
            arch: arch.into(),
            metadata,
            tensors,
        };
        let path = dir.path().join(format!("{arch}.gguf"));
        w.write(&path).expect("write");
        let worst = student_vs_engine(&path, &tokens);
        eprintln!("{arch}: largest |Δ log-prob| {worst:.2e}");
        assert!(worst < 1e-3, "{arch}: {worst}");
    }
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

/// A registry over the real SmolLM2 file: `base`, and `student` = base
/// with 28 of its 30 blocks dropped, then distilled from base on COPA's
/// train split. `distill` is the body of the step (YAML flow mapping).
fn registry(dir: &std::path::Path, distill: &str) -> std::path::PathBuf {
    let model = common::model_path("smollm2-135m-instruct");
    let drop: Vec<String> = (2..30).map(|i| i.to_string()).collect();
    let yaml = format!(
        "models:\n  base:\n    file: base.gguf\n    sources: [{{path: {}}}]\n  gemma:\n    file: gemma.gguf\n    sources: [{{path: {}}}]\n  student:\n    parent: base\n    steps:\n      - prune: {{method: layers, drop: [{}]}}\n      - distill: {{{distill}}}\n",
        model.display(),
        common::model_path("gemma3-270m").display(),
        drop.join(", ")
    );
    let p = dir.join("models.yaml");
    std::fs::write(&p, yaml).expect("write");
    p
}

const STEP: &str = "teacher: base, data: [{task: copa, split: train, limit: 12}], held_out: {task: copa, split: validation, limit: 4}, steps: 6, batch: 2, seq_len: 24, lr: 1.0e-3, checkpoint_every: 2";

fn variants_cmd(
    yaml: &std::path::Path,
    home: &std::path::Path,
    data: &std::path::Path,
) -> std::process::Command {
    let mut c = common::bin();
    c.args(["variants", "--models"])
        .arg(yaml)
        .arg("student")
        .env("SLMBENCH_HOME", home)
        .env("SLMBENCH_OFFLINE", "1")
        .env("SLMBENCH_DATA_DIR", data);
    c
}

/// The variant's GGUF and its report in `home`.
fn built(home: &std::path::Path) -> (std::path::PathBuf, slmbench::variant::VariantReport) {
    let gguf: Vec<_> = std::fs::read_dir(home.join("variants"))
        .expect("variants")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "gguf")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("student-"))
        })
        .collect();
    assert_eq!(gguf.len(), 1, "{gguf:?}");
    let report = slmbench::variant::materialize::read_report(
        &slmbench::variant::materialize::sidecar_path(&gguf[0]),
    )
    .expect("report");
    (gguf[0].clone(), report)
}

/// The `distill` step end to end through the CLI: it trains (the loss and
/// the held-out KL fall), reports what it did, leaves no checkpoint behind;
/// killed with SIGKILL after a checkpoint and run again, it resumes there
/// and writes the same file, byte for byte, as the uninterrupted build.
#[test]
fn distill_step_trains_and_resumes_after_kill_9_to_the_same_file() {
    let Some(shared) = common::shared_dir() else {
        return;
    };
    let data = shared.join("data");
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = registry(dir.path(), STEP);

    // Uninterrupted.
    let home_a = dir.path().join("a");
    let out = variants_cmd(&yaml, &home_a, &data).output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("distill from base: 6 steps × 2 sequences"),
        "{text}"
    );
    let (gguf_a, ra) = built(&home_a);
    let t = &ra.training[0];
    assert_eq!((t.step, t.losses.len(), t.resumed_from), (1, 6, None));
    assert_eq!(
        t.sources,
        vec!["copa/train (first 12): 12 texts".to_string()]
    );
    assert_eq!(t.held_out_sequences, 4);
    let (before, after) = (
        t.held_out_kl_before.expect("kl before"),
        t.held_out_kl_after.expect("kl after"),
    );
    assert!(after < before, "held-out KL {before} → {after}");
    assert!(t.energy_j.is_some_and(|e| e > 0.0));
    // Every trained tensor has a row; the two blocks left were trained.
    let rows: Vec<_> = ra.rows.iter().filter(|r| r.op == "distill").collect();
    assert_eq!(
        rows.len(),
        1 + 2 * 9 + 1,
        "embedding, 2 blocks, norm (tied head)"
    );
    assert!(rows.iter().all(|r| r.rel_error.is_some_and(|e| e > 0.0)));
    assert!(
        !home_a
            .join("variants")
            .read_dir()
            .expect("dir")
            .any(|e| e.is_ok_and(|e| e.path().is_dir())),
        "checkpoints left behind"
    );

    // Killed after its second-step checkpoint, then resumed.
    let home_b = dir.path().join("b");
    let mut child = variants_cmd(&yaml, &home_b, &data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let t0 = std::time::Instant::now();
    let killed_at = loop {
        let ckpt = std::fs::read_dir(home_b.join("variants"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter(|e| e.path().is_dir())
            .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten())
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_string_lossy().starts_with("ckpt-"));
        if let Some(c) = ckpt {
            child.kill().expect("kill -9");
            break c.file_name().to_string_lossy().to_string();
        }
        if let Ok(Some(s)) = child.try_wait() {
            panic!("the build ended ({s}) before a checkpoint was seen");
        }
        assert!(t0.elapsed().as_secs() < 300, "no checkpoint after 300 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let _ = child.wait();
    assert!(
        !home_b
            .join("variants")
            .read_dir()
            .expect("dir")
            .any(|e| { e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "gguf")) }),
        "killed at {killed_at}, yet a variant was written"
    );
    let out = variants_cmd(&yaml, &home_b, &data).output().expect("rerun");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (gguf_b, rb) = built(&home_b);
    let resumed = rb.training[0].resumed_from.expect("resumed");
    assert!(
        (2..6).contains(&resumed),
        "resumed from {resumed} (killed at {killed_at})"
    );
    assert_eq!(rb.training[0].losses, t.losses);
    assert_eq!(rb.cache_key, ra.cache_key);
    let a = std::fs::read(&gguf_a).expect("a");
    let b = std::fs::read(&gguf_b).expect("b");
    assert!(
        a == b,
        "the resumed build's file differs from the uninterrupted one"
    );
}

/// Bad `distill` steps: one-line errors naming the key; a diverging run
/// keeps its last checkpoint and writes no variant.
#[test]
fn bad_distill_steps_name_the_key() {
    let Some(shared) = common::shared_dir() else {
        return;
    };
    let data = shared.join("data");
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let err = |step: &str, data_dir: Option<&std::path::Path>, needles: &[&str]| {
        let yaml = registry(dir.path(), step);
        let mut c = variants_cmd(&yaml, &home, data_dir.unwrap_or(std::path::Path::new("")));
        if data_dir.is_none() {
            c.env_remove("SLMBENCH_DATA_DIR");
        }
        common::assert_error(&c.output().expect("run"), needles);
    };
    let with = |k: &str| STEP.replace("lr: 1.0e-3", k);
    err(
        &STEP.replace("teacher: base", "teacher: gemma"),
        Some(&data),
        &[
            "model `student`",
            "steps[1].distill.teacher",
            "another vocabulary",
        ],
    );
    err(
        &STEP.replace("split: train", "split: validation"),
        Some(&data),
        &["steps[1].distill.data[0].split", "evaluated"],
    );
    err(
        &STEP.replace("steps: 6", "steps: 0"),
        Some(&data),
        &["steps[1].distill.steps"],
    );
    err(STEP, None, &["steps[1].distill.data[0].task", "--data-dir"]);
    err(
        &with("lr: 1.0e+30"),
        Some(&data),
        &["steps[1].distill.lr", "kept in"],
    );
    // The state after the last good step is on disk; no variant file.
    let entries: Vec<_> = std::fs::read_dir(home.join("variants"))
        .expect("variants")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    assert!(
        entries.iter().any(|p| p.is_dir()
            && p.read_dir().is_ok_and(|mut d| d
                .any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("ckpt-"))))),
        "{entries:?}"
    );
    assert!(
        !entries.iter().any(|p| p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("student-"))
            && p.extension().is_some_and(|x| x == "gguf")),
        "{entries:?}"
    );
}
