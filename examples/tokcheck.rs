use slmbench::{gguf::GgufFile, tokenizer::TextTokenizer};
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (path, model, refs) = (&args[1], &args[2], &args[3]);
    let t0 = std::time::Instant::now();
    let g = GgufFile::open(std::path::Path::new(path)).unwrap();
    let tok = TextTokenizer::from_gguf(&g).unwrap();
    eprintln!("built in {:?}", t0.elapsed());
    let (mut ok, mut n) = (0, 0);
    for line in std::fs::read_to_string(refs).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["model"] != *model {
            continue;
        }
        let text = v["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(v["ids"].clone()).unwrap();
        let got = tok.encode(text).unwrap();
        n += 1;
        if got == want {
            ok += 1
        } else {
            println!("MISMATCH {text:?}\n want {want:?}\n got  {got:?}");
        }
    }
    println!("{model}: {ok}/{n}");
}
