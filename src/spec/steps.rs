//! Compression steps as written in `models.yaml` (`steps:` of a variant),
//! parsed from YAML values into closed enums with errors that name the
//! field (`steps[1].prune.sparsity`) and the fix. No I/O, no tensors.
//!
//! ```yaml
//! steps:
//!   - quantize: q4k                                   # or {type: q4k, embeddings: keep|same|q8_0|…}
//!   - prune: {method: magnitude, sparsity: 0.5, scope: per_matrix}   # or scope: global
//!   - prune: {method: n_m, n: 2, m: 4}                # keep n of every m weights along a row
//!   - prune: {method: layers, drop: [10, 11]}         # skip decoder blocks
//!   - low_rank: {rank_ratio: 0.5}                     # or {energy: 0.9}; targets: [ffn_up, …]
//!   - distill: {teacher: MODEL, data: [...], steps: 200}   # see `spec::distill`
//! ```

use serde::Serialize;
use serde_json::Value;

/// The quantization types a `quantize` step can ask for (candle's GGML types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantType {
    Q8_0,
    Q6k,
    Q5k,
    Q4k,
    Q4_0,
    Q3k,
    Q2k,
}

impl QuantType {
    pub const ALL: [QuantType; 7] = [
        QuantType::Q8_0,
        QuantType::Q6k,
        QuantType::Q5k,
        QuantType::Q4k,
        QuantType::Q4_0,
        QuantType::Q3k,
        QuantType::Q2k,
    ];

    pub fn name(self) -> &'static str {
        match self {
            QuantType::Q8_0 => "q8_0",
            QuantType::Q6k => "q6k",
            QuantType::Q5k => "q5k",
            QuantType::Q4k => "q4k",
            QuantType::Q4_0 => "q4_0",
            QuantType::Q3k => "q3k",
            QuantType::Q2k => "q2k",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        let norm = s.to_ascii_lowercase().replace(['-', '_'], "");
        Self::ALL
            .into_iter()
            .find(|t| t.name().replace('_', "") == norm)
    }

    fn list() -> String {
        Self::ALL.map(|t| t.name()).join(", ")
    }
}

/// What a `quantize` step does with `token_embd` / `output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Embeddings {
    /// Quantized with the step's type (default).
    Same,
    /// Left as they are (full precision).
    Keep,
    /// Quantized with another (usually higher-precision) type.
    Type(QuantType),
}

/// Whether a magnitude threshold is chosen per matrix or over all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    PerMatrix,
    Global,
}

/// The projection matrices of a decoder block (llama.cpp names).
pub const PROJECTIONS: [&str; 7] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

/// How many singular values a `low_rank` step keeps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RankRule {
    /// `round(ratio · min(rows, cols))`, at least 1.
    RankRatio(f64),
    /// The smallest rank whose singular values hold this share of `Σ s²`.
    Energy(f64),
}

/// One compression step; steps apply in the order written.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Quantize {
        #[serde(rename = "type")]
        qtype: QuantType,
        embeddings: Embeddings,
    },
    Prune(Prune),
    LowRank {
        rank: RankRule,
        targets: Vec<String>,
    },
    /// Training towards a teacher's next-token distributions.
    Distill(super::distill::Distill),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "method")]
pub enum Prune {
    /// Unstructured: the smallest-magnitude weights set to zero.
    Magnitude {
        sparsity: f64,
        scope: Scope,
        targets: Vec<String>,
    },
    /// Semi-structured: in every group of `m` consecutive weights of a row,
    /// only the `n` largest in magnitude are kept.
    NM {
        n: usize,
        m: usize,
        targets: Vec<String>,
    },
    /// Structured: decoder blocks removed (the rest renumbered).
    Layers { drop: Vec<usize> },
}

impl Step {
    /// A short label (`quantize q4k`, `prune 2:4`, …) for tables.
    pub fn label(&self) -> String {
        match self {
            Step::Quantize { qtype, .. } => format!("quantize {}", qtype.name()),
            Step::Prune(Prune::Magnitude {
                sparsity, scope, ..
            }) => format!(
                "prune magnitude {:.0}%{}",
                sparsity * 100.0,
                if *scope == Scope::Global {
                    " global"
                } else {
                    ""
                }
            ),
            Step::Prune(Prune::NM { n, m, .. }) => format!("prune {n}:{m}"),
            Step::Prune(Prune::Layers { drop }) => format!("drop layers {drop:?}"),
            Step::LowRank { rank, .. } => match rank {
                RankRule::RankRatio(r) => format!("low_rank ratio {r}"),
                RankRule::Energy(e) => format!("low_rank energy {e}"),
            },
            Step::Distill(d) => format!("distill from {} ({} steps)", d.teacher, d.steps),
        }
    }
}

/// Parses a variant's `steps:` list. The error is one line naming the field.
pub fn parse_steps(steps: &[Value]) -> Result<Vec<Step>, String> {
    steps
        .iter()
        .enumerate()
        .map(|(i, v)| parse_step(v, &format!("steps[{i}]")))
        .collect()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn parse_step(v: &Value, at: &str) -> Result<Step, String> {
    let obj = v
        .as_object()
        .filter(|o| o.len() == 1)
        .ok_or_else(|| {
            format!(
                "field `{at}`: expected one of `quantize: TYPE`, `prune: {{method: …}}`, `low_rank: {{…}}` or `distill: {{…}}`, got {}",
                kind(v)
            )
        })?;
    let (op, body) = obj
        .iter()
        .next()
        .ok_or_else(|| format!("field `{at}`: empty"))?;
    let at = format!("{at}.{op}");
    match op.as_str() {
        "quantize" => parse_quantize(body, &at),
        "prune" => parse_prune(body, &at).map(Step::Prune),
        "low_rank" => parse_low_rank(body, &at),
        "distill" => super::distill::parse(body, &at).map(Step::Distill),
        other => Err(format!(
            "field `{at}`: unknown step `{other}` (use quantize, prune, low_rank or distill)"
        )),
    }
}

/// A mapping's keys checked against `allowed`.
fn fields<'a>(
    body: &'a Value,
    at: &str,
    allowed: &[&str],
) -> Result<&'a serde_json::Map<String, Value>, String> {
    let obj = body
        .as_object()
        .ok_or_else(|| format!("field `{at}`: expected a mapping, got {}", kind(body)))?;
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!(
            "field `{at}.{k}`: unknown key (allowed: {})",
            allowed.join(", ")
        ));
    }
    Ok(obj)
}

fn qtype(v: &Value, at: &str) -> Result<QuantType, String> {
    let s = v
        .as_str()
        .ok_or_else(|| format!("field `{at}`: expected a type name, got {}", kind(v)))?;
    QuantType::parse(s).ok_or_else(|| {
        format!(
            "field `{at}`: unknown type `{s}` (use {})",
            QuantType::list()
        )
    })
}

fn parse_quantize(body: &Value, at: &str) -> Result<Step, String> {
    if body.is_string() {
        return Ok(Step::Quantize {
            qtype: qtype(body, at)?,
            embeddings: Embeddings::Same,
        });
    }
    let obj = fields(body, at, &["type", "embeddings"])?;
    let t = obj
        .get("type")
        .ok_or_else(|| format!("field `{at}.type`: missing (use {})", QuantType::list()))?;
    let embeddings =
        match obj.get("embeddings") {
            None => Embeddings::Same,
            Some(Value::String(s)) if s == "same" => Embeddings::Same,
            Some(Value::String(s)) if s == "keep" => Embeddings::Keep,
            Some(v) => Embeddings::Type(qtype(v, &format!("{at}.embeddings")).map_err(|e| {
                format!("{e}; or `keep` (full precision) or `same` (the step's type)")
            })?),
        };
    Ok(Step::Quantize {
        qtype: qtype(t, &format!("{at}.type"))?,
        embeddings,
    })
}

fn number(obj: &serde_json::Map<String, Value>, key: &str, at: &str) -> Result<f64, String> {
    let v = obj
        .get(key)
        .ok_or_else(|| format!("field `{at}.{key}`: missing"))?;
    v.as_f64()
        .filter(|x| x.is_finite())
        .ok_or_else(|| format!("field `{at}.{key}`: expected a number, got {}", kind(v)))
}

fn count(obj: &serde_json::Map<String, Value>, key: &str, at: &str) -> Result<usize, String> {
    let v = obj
        .get(key)
        .ok_or_else(|| format!("field `{at}.{key}`: missing"))?;
    v.as_u64()
        .map(|x| x as usize)
        .ok_or_else(|| format!("field `{at}.{key}`: expected a whole number ≥ 0, got {}", v))
}

fn targets(obj: &serde_json::Map<String, Value>, at: &str) -> Result<Vec<String>, String> {
    let Some(v) = obj.get("targets") else {
        return Ok(PROJECTIONS.iter().map(|s| s.to_string()).collect());
    };
    let at = format!("{at}.targets");
    let list = v
        .as_array()
        .ok_or_else(|| format!("field `{at}`: expected a list of projection names"))?;
    if list.is_empty() {
        return Err(format!(
            "field `{at}`: empty (name at least one of {})",
            PROJECTIONS.join(", ")
        ));
    }
    let mut out = Vec::new();
    for t in list {
        match t.as_str() {
            Some(s) if PROJECTIONS.contains(&s) => {
                if !out.iter().any(|o: &String| o == s) {
                    out.push(s.to_string());
                }
            }
            _ => {
                return Err(format!(
                    "field `{at}`: unknown projection {t} (use {})",
                    PROJECTIONS.join(", ")
                ))
            }
        }
    }
    Ok(out)
}

fn parse_prune(body: &Value, at: &str) -> Result<Prune, String> {
    let method = body
        .get("method")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("field `{at}.method`: missing (use magnitude, n_m or layers)"))?;
    match method {
        "magnitude" => {
            let obj = fields(body, at, &["method", "sparsity", "scope", "targets"])?;
            let sparsity = number(obj, "sparsity", at)?;
            if !(0.0..1.0).contains(&sparsity) {
                return Err(format!(
                    "field `{at}.sparsity`: {sparsity} must be in [0, 1) (the share of weights set to zero)"
                ));
            }
            let scope = match obj.get("scope").map(|v| v.as_str()) {
                None | Some(Some("per_matrix")) => Scope::PerMatrix,
                Some(Some("global")) => Scope::Global,
                Some(_) => {
                    return Err(format!(
                        "field `{at}.scope`: use per_matrix (default) or global"
                    ))
                }
            };
            Ok(Prune::Magnitude {
                sparsity,
                scope,
                targets: targets(obj, at)?,
            })
        }
        "n_m" => {
            let obj = fields(body, at, &["method", "n", "m", "targets"])?;
            let n = count(obj, "n", at)?;
            let m = count(obj, "m", at)?;
            if m < 2 {
                return Err(format!("field `{at}.m`: {m} must be at least 2"));
            }
            if n == 0 || n >= m {
                return Err(format!(
                    "field `{at}.n`: {n} must be in 1..{m} (n weights kept of every m = {m})"
                ));
            }
            Ok(Prune::NM {
                n,
                m,
                targets: targets(obj, at)?,
            })
        }
        "layers" => {
            let obj = fields(body, at, &["method", "drop"])?;
            let v = obj
                .get("drop")
                .ok_or_else(|| format!("field `{at}.drop`: missing (a list of block indices)"))?;
            let list = v.as_array().filter(|l| !l.is_empty()).ok_or_else(|| {
                format!("field `{at}.drop`: expected a non-empty list of block indices")
            })?;
            let mut drop = Vec::new();
            for x in list {
                let i = x.as_u64().ok_or_else(|| {
                    format!("field `{at}.drop`: `{x}` is not a block index (0, 1, …)")
                })? as usize;
                if drop.contains(&i) {
                    return Err(format!("field `{at}.drop`: block {i} is listed twice"));
                }
                drop.push(i);
            }
            drop.sort_unstable();
            Ok(Prune::Layers { drop })
        }
        other => Err(format!(
            "field `{at}.method`: unknown method `{other}` (use magnitude, n_m or layers)"
        )),
    }
}

fn parse_low_rank(body: &Value, at: &str) -> Result<Step, String> {
    let obj = fields(body, at, &["rank_ratio", "energy", "targets"])?;
    let rank = match (obj.contains_key("rank_ratio"), obj.contains_key("energy")) {
        (true, false) => {
            let r = number(obj, "rank_ratio", at)?;
            if !(r > 0.0 && r <= 1.0) {
                return Err(format!(
                    "field `{at}.rank_ratio`: {r} must be in (0, 1] (rank kept / full rank)"
                ));
            }
            RankRule::RankRatio(r)
        }
        (false, true) => {
            let e = number(obj, "energy", at)?;
            if !(e > 0.0 && e <= 1.0) {
                return Err(format!(
                    "field `{at}.energy`: {e} must be in (0, 1] (share of Σ singular value² kept)"
                ));
            }
            RankRule::Energy(e)
        }
        _ => {
            return Err(format!(
                "field `{at}`: give exactly one of `rank_ratio` or `energy`"
            ))
        }
    };
    Ok(Step::LowRank {
        rank,
        targets: targets(obj, at)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Vec<Step>, String> {
        let v: Vec<Value> = serde_saphyr::from_str(yaml).expect("yaml");
        parse_steps(&v)
    }

    #[test]
    fn forms_parse() {
        let s = parse(
            "- quantize: q4k\n- quantize: {type: Q8_0, embeddings: keep}\n- prune: {method: magnitude, sparsity: 0.5, scope: global}\n- prune: {method: n_m, n: 2, m: 4}\n- prune: {method: layers, drop: [3, 1]}\n- low_rank: {energy: 0.9, targets: [ffn_up]}\n",
        )
        .expect("parse");
        assert_eq!(s.len(), 6);
        assert_eq!(
            s[1],
            Step::Quantize {
                qtype: QuantType::Q8_0,
                embeddings: Embeddings::Keep
            }
        );
        assert_eq!(s[4], Step::Prune(Prune::Layers { drop: vec![1, 3] }));
        let json = serde_json::to_string(&s[0]).expect("json");
        assert_eq!(json, r#"{"quantize":{"type":"q4k","embeddings":"same"}}"#);
    }

    #[test]
    fn bad_specs_name_the_field() {
        for (yaml, needles) in [
            (
                "- prune: {method: magnitude, sparsity: 1.0}",
                &["steps[0].prune.sparsity", "[0, 1)"][..],
            ),
            (
                "- prune: {method: magnitude, sparsity: 1.5}",
                &["sparsity"][..],
            ),
            (
                "- low_rank: {rank_ratio: 0}",
                &["steps[0].low_rank.rank_ratio"][..],
            ),
            (
                "- quantize: q9k",
                &["steps[0].quantize", "unknown type `q9k`", "q2k"][..],
            ),
            (
                "- quantize: {type: q4k, embeddings: q7}",
                &["steps[0].quantize.embeddings"][..],
            ),
            (
                "- prune: {method: n_m, n: 4, m: 4}",
                &["steps[0].prune.n"][..],
            ),
            (
                "- prune: {method: layers, drop: [1, 1]}",
                &["steps[0].prune.drop", "twice"][..],
            ),
            ("- prune: {method: bogus}", &["steps[0].prune.method"][..]),
            ("- shrink: 2", &["steps[0].shrink", "unknown step"][..]),
            (
                "- low_rank: {rank_ratio: 0.5, energy: 0.9}",
                &["exactly one"][..],
            ),
            (
                "- low_rank: {rank_ratio: 0.5, targets: [wq]}",
                &["steps[0].low_rank.targets"][..],
            ),
            (
                "- prune: {method: magnitude, sparsity: 0.5, colour: red}",
                &["steps[0].prune.colour"][..],
            ),
        ] {
            let e = parse(yaml).expect_err(yaml);
            assert_eq!(e.lines().count(), 1, "{e}");
            for n in needles {
                assert!(e.contains(n), "`{n}` not in: {e}");
            }
        }
    }
}
