use slmbench::backend::candle::layers::WeightMode;
use slmbench::backend::scorer::{CandleScorer, Scorer};
use slmbench::{gguf::GgufFile, tokenizer::TextTokenizer};
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let mode = if a[3] == "f32" {
        WeightMode::F32
    } else {
        WeightMode::Quantized
    };
    let limit: usize = a[4].parse().unwrap();
    let t0 = std::time::Instant::now();
    let mut g = GgufFile::open(std::path::Path::new(&a[1])).unwrap();
    let tok = TextTokenizer::from_gguf(&g).unwrap();
    let model = slmbench::backend::candle::load(&mut g, mode).unwrap();
    let ctxlen = model.info().context_length;
    let mut s = CandleScorer::new(model, tok, ctxlen);
    eprintln!("load {:?}", t0.elapsed());
    let t0 = std::time::Instant::now();
    let (mut n, mut agree, mut worst) = (0, 0, 0f64);
    for line in std::fs::read_to_string(&a[2]).unwrap().lines().take(limit) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let ctx = v["context"].as_str().unwrap();
        let conts: Vec<String> = serde_json::from_value(v["continuations"].clone()).unwrap();
        let want: Vec<f64> = serde_json::from_value(v["loglikelihoods"].clone()).unwrap();
        let got = s.score_doc(ctx, &conts).unwrap();
        let lls: Vec<f64> = got.choices.iter().map(|c| c.loglikelihood).collect();
        let pred = lls
            .iter()
            .enumerate()
            .fold(0, |b, (i, x)| if *x > lls[b] { i } else { b });
        n += 1;
        if pred as u64 == v["pred"].as_u64().unwrap() {
            agree += 1
        }
        for (x, y) in lls.iter().zip(&want) {
            worst = f64::max(worst, (x - y).abs());
        }
        if n <= 3 {
            println!("{:?}\n{:?}", lls, want);
        }
    }
    println!(
        "n={n} agree={agree} worst={worst:.5} time {:?}",
        t0.elapsed()
    );
}
