//! Compression variants end to end: bad specs are one-line errors naming
//! the field; a composed variant of the real SmolLM2 is materialized,
//! reported, exported, and the exported GGUF reloads and scores exactly as
//! the cached variant does.

use crate::common;

use crate::common::{assert_error, run_offline as run};

use std::path::{Path, PathBuf};

const BASE: &str = "models:\n  base:\n    file: base.gguf\n    sources: [{path: base.gguf}]\n";

#[test]
fn bad_variant_specs_name_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    for (i, (entry, needles)) in [
        (
            "  v:\n    parent: base\n    steps: [{prune: {method: magnitude, sparsity: 1.0}}]\n",
            &["model `v`", "steps[0].prune.sparsity", "[0, 1)"][..],
        ),
        (
            "  v:\n    parent: base\n    steps: [{low_rank: {rank_ratio: 0}}]\n",
            &["steps[0].low_rank.rank_ratio"][..],
        ),
        (
            "  v:\n    parent: base\n    steps: [{quantize: q3_k_xl}]\n",
            &["steps[0].quantize", "unknown type `q3_k_xl`", "q8_0"][..],
        ),
        (
            "  v:\n    parent: nowhere\n    steps: [{quantize: q8_0}]\n",
            &["model `v`", "field `parent`", "nowhere"][..],
        ),
        (
            "  a:\n    parent: b\n  b:\n    parent: a\n",
            &["field `parent`", "cycle", "a → b → a"][..],
        ),
        (
            "  v:\n    parent: base\n    file: v.gguf\n",
            &["model `v`", "field `file`"][..],
        ),
        (
            "  v:\n    file: v.gguf\n    steps: [{quantize: q8_0}]\n",
            &["field `steps`", "parent"][..],
        ),
        (
            "  v:\n    file: v.gguf\n    distilled_from: teacher\n",
            &["field `distilled_from`", "teacher"][..],
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let file = dir.path().join(format!("m{i}.yaml"));
        std::fs::write(&file, format!("{BASE}{entry}")).expect("write");
        let name = file.display().to_string();
        let out = run(&["validate", &name], &home, dir.path());
        let mut all = vec![name.as_str()];
        all.extend_from_slice(needles);
        assert_error(&out, &all);
    }
}

/// A registry with the real SmolLM2 file as `base` and a composed variant.
fn registry(dir: &Path, model: &Path, extra: &str) -> PathBuf {
    let yaml = format!(
        "models:\n  base:\n    file: base.gguf\n    sources: [{{path: {}}}]\n  small:\n    parent: base\n    steps:\n      - prune: {{method: layers, drop: [10, 11]}}\n      - prune: {{method: n_m, n: 2, m: 4, targets: [ffn_up]}}\n      - low_rank: {{rank_ratio: 0.25, targets: [attn_q]}}\n      - quantize: {{type: q8_0, embeddings: keep}}\n{extra}",
        model.display()
    );
    let p = dir.join("models.yaml");
    std::fs::write(&p, yaml).expect("write");
    p
}

#[test]
fn variant_materializes_exports_and_reloads_identically() {
    if common::shared_dir().is_none() {
        return;
    }
    let model = common::model_path("smollm2-135m-instruct");
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let out_file = dir.path().join("small.gguf");
    let extra = format!(
        "  exported:\n    file: exported.gguf\n    sources: [{{path: {}}}]\n",
        out_file.display()
    );
    let yaml = registry(dir.path(), &model, &extra);
    let y = yaml.display().to_string();

    // A layer index past the depth is an error naming the field.
    let deep = dir.path().join("deep.yaml");
    std::fs::write(
        &deep,
        format!(
            "models:\n  base:\n    file: base.gguf\n    sources: [{{path: {}}}]\n  deep:\n    parent: base\n    steps: [{{prune: {{method: layers, drop: [3, 30]}}}}]\n",
            model.display()
        ),
    )
    .expect("write");
    let d = deep.display().to_string();
    assert_error(
        &run(&["variants", "--models", &d], &home, dir.path()),
        &[
            "model `deep`",
            "steps[0].prune.drop",
            "block 30",
            "30 blocks",
        ],
    );

    // Materialize and list what each step did.
    let out = run(&["variants", "--models", &y, "small"], &home, dir.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("blk.10.*") && text.contains("drop layer"),
        "{text}"
    );
    assert!(text.contains("144/576"), "rank kept/full: {text}");
    assert!(text.contains("50.00%"), "2:4 sparsity: {text}");
    assert!(text.contains("F16 (fallback)"), "lr_b rows of 144: {text}");
    assert!(text.contains("requantized"), "{text}");

    // The report: exact 2:4 sparsity on every ffn_up, rank 144 of 576.
    let variants: Vec<PathBuf> = std::fs::read_dir(home.join("variants"))
        .expect("variants dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(variants.len(), 1, "{variants:?}");
    let report = slmbench::variant::materialize::read_report(&variants[0]).expect("report");
    let n_m: Vec<_> = report.rows.iter().filter(|r| r.op == "prune n:m").collect();
    assert_eq!(n_m.len(), 28);
    // At least half (weights already zero in the parent may add a few).
    assert!(
        n_m.iter()
            .all(|r| r.sparsity.is_some_and(|x| (0.5..0.51).contains(&x))),
        "{n_m:?}"
    );
    // The written (Q8_0, which keeps zeros) ffn_up has at most 2 non-zeros per 4.
    let gguf_path = variants[0].with_extension("");
    let mut g = slmbench::model::gguf::GgufFile::open(&gguf_path).expect("variant gguf");
    let up = g
        .tensor("blk.0.ffn_up.weight")
        .expect("tensor")
        .dequantize(&candle_core::Device::Cpu)
        .expect("dequantize");
    let v = up
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("values");
    assert!(v
        .chunks(4)
        .all(|g| g.iter().filter(|x| **x != 0.0).count() <= 2));
    let lr: Vec<_> = report.rows.iter().filter(|r| r.op == "low_rank").collect();
    assert_eq!(lr.len(), 28);
    assert!(lr.iter().all(|r| r.rank == Some((144, 576))));

    // Export, then load the cached variant and the exported file.
    let o = out_file.display().to_string();
    let out = run(
        &["export", "small", "--out", &o, "--models", &y],
        &home,
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The sandbox's cache, offline, passed explicitly: setting the process's
    // SLMBENCH_HOME here leaked into every binary the other tests spawned
    // afterwards (they then looked for models in this sandbox).
    let reg = slmbench::spec::models::Registry::load(&yaml).expect("registry");
    let opts = slmbench::model::fetch::FetchOptions::from_env_with(|k| {
        (k == "SLMBENCH_OFFLINE").then(|| "1".to_string())
    });
    let load = |name: &str| {
        let got = slmbench::obtain::obtain(&reg, name, &home, &opts).expect("obtain");
        let spec = reg.get(name).expect("spec");
        slmbench::backend::open(spec, &got, &Default::default()).expect("open")
    };
    let mut a = load("small");
    let mut b = load("exported");
    assert_eq!(a.record.n_layer, Some(28));
    assert_eq!(b.record.n_layer, Some(28));
    let lineage = a.record.lineage.as_ref().expect("lineage");
    assert_eq!(
        (lineage.relation.as_str(), lineage.parent.as_str()),
        ("variant", "base")
    );
    for (ctx, conts) in [
        (
            "The man broke his toe because",
            &[
                " he dropped a hammer on his foot.",
                " he got a hole in his sock.",
            ][..],
        ),
        (
            "Question: Which is a mammal?\nAnswer:",
            &[" a whale", " a shark", " a trout"][..],
        ),
        (
            "My body cast a shadow over the grass because",
            &[" the sun was rising.", " the grass was cut."][..],
        ),
    ] {
        let conts: Vec<String> = conts.iter().map(|s| s.to_string()).collect();
        let x = a.scorer.score_doc(ctx, &conts).expect("score");
        let y = b.scorer.score_doc(ctx, &conts).expect("score");
        let lx: Vec<f64> = x.choices.iter().map(|c| c.loglikelihood).collect();
        let ly: Vec<f64> = y.choices.iter().map(|c| c.loglikelihood).collect();
        assert_eq!(lx, ly, "{ctx}");
        assert!(lx.iter().all(|v| v.is_finite() && *v < 0.0), "{lx:?}");
    }
}
