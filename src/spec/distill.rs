//! The `distill` variant step as written in `models.yaml`, parsed into
//! [`Distill`] with errors naming the field (`steps[1].distill.lr`). No I/O:
//! whether the teacher exists, the data is there and the split is not an
//! evaluated one is checked when the variant is obtained.
//!
//! ```yaml
//! - distill:
//!     teacher: smollm2-135m-f32          # a model of the registry (same tokenizer)
//!     data:                              # the training corpus, in this order
//!       - {task: arc_easy, split: train} # a task's split rendered with its gold answer
//!       - {task: copa, split: train, limit: 200}
//!       - {text: corpus/notes.txt}       # plain text, one sequence per paragraph
//!     held_out: {task: arc_easy, split: validation, limit: 50}   # KL measured before/after
//!     steps: 200                         # optimizer steps (required)
//!     batch: 4                           # sequences per step
//!     seq_len: 64                        # tokens per sequence (longer ones are cut)
//!     lr: 5.0e-5                         # AdamW learning rate
//!     temperature: 1.0                   # softmax temperature of both distributions
//!     alpha: 1.0                         # weight of the KL term; 1 − alpha: next-token loss
//!     seed: 1                            # order of the corpus
//!     checkpoint_every: 25               # steps between checkpoints (not part of the result)
//! ```

use serde::Serialize;
use serde_json::{Map, Value};

/// Where training text comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CorpusSource {
    /// A task's split, each document rendered as a few-shot example is
    /// (`doc_to_text`, `target_delimiter`, the gold answer).
    Task {
        task: String,
        split: String,
        limit: Option<usize>,
    },
    /// A UTF-8 text file (relative to `models.yaml`); paragraphs separated
    /// by blank lines are sequences.
    Text { text: String },
}

impl CorpusSource {
    pub fn label(&self) -> String {
        match self {
            CorpusSource::Task { task, split, limit } => match limit {
                Some(n) => format!("{task}/{split} (first {n})"),
                None => format!("{task}/{split}"),
            },
            CorpusSource::Text { text } => text.clone(),
        }
    }
}

/// A `distill` step: train the student (the variant so far) towards the
/// teacher's next-token distributions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Distill {
    pub teacher: String,
    pub data: Vec<CorpusSource>,
    pub held_out: Option<CorpusSource>,
    pub steps: usize,
    pub batch: usize,
    pub seq_len: usize,
    pub lr: f64,
    pub temperature: f64,
    pub alpha: f64,
    pub seed: u64,
    /// How often the training state is saved; the result does not depend
    /// on it, so it is left out of the cache key.
    #[serde(skip)]
    pub checkpoint_every: usize,
}

const KEYS: [&str; 12] = [
    "teacher",
    "data",
    "held_out",
    "steps",
    "batch",
    "seq_len",
    "lr",
    "temperature",
    "alpha",
    "seed",
    "checkpoint_every",
    "method",
];

fn whole(obj: &Map<String, Value>, key: &str, at: &str, default: u64) -> Result<u64, String> {
    match obj.get(key) {
        None => Ok(default),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| format!("field `{at}.{key}`: expected a whole number ≥ 0, got {v}")),
    }
}

fn real(obj: &Map<String, Value>, key: &str, at: &str, default: f64) -> Result<f64, String> {
    match obj.get(key) {
        None => Ok(default),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| format!("field `{at}.{key}`: expected a finite number, got {v}")),
    }
}

fn source(v: &Value, at: &str, held_out: bool) -> Result<CorpusSource, String> {
    let obj = v.as_object().ok_or_else(|| {
        format!("field `{at}`: expected `{{task: NAME, split: SPLIT}}` or `{{text: FILE}}`")
    })?;
    let allowed: &[&str] = if obj.contains_key("text") && !held_out {
        &["text"]
    } else {
        &["task", "split", "limit"]
    };
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!(
            "field `{at}.{k}`: unknown key (allowed: {})",
            allowed.join(", ")
        ));
    }
    if let Some(t) = obj.get("text") {
        let t = t
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("field `{at}.text`: expected a file name"))?;
        return Ok(CorpusSource::Text {
            text: t.to_string(),
        });
    }
    let text = |k: &str| -> Result<String, String> {
        obj.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| match k {
                "task" => format!("field `{at}.task`: missing (a task name, e.g. arc_easy)"),
                _ => format!(
                    "field `{at}.split`: missing (a split that is not evaluated, e.g. train)"
                ),
            })
    };
    let limit = match obj.get("limit") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("field `{at}.limit`: expected a whole number ≥ 1"))?
                as usize,
        ),
    };
    Ok(CorpusSource::Task {
        task: text("task")?,
        split: text("split")?,
        limit,
    })
}

/// Parses the body of `distill:` at `at` (`steps[i].distill`).
pub fn parse(body: &Value, at: &str) -> Result<Distill, String> {
    let obj = body.as_object().ok_or_else(|| {
        format!("field `{at}`: expected a mapping {{teacher: MODEL, data: [...], steps: N, …}}")
    })?;
    if let Some(k) = obj.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(format!(
            "field `{at}.{k}`: unknown key (allowed: {})",
            KEYS.join(", ")
        ));
    }
    if let Some(m) = obj.get("method") {
        if m.as_str() != Some("logits") {
            return Err(format!(
                "field `{at}.method`: only `logits` (match the teacher's next-token distributions) is implemented"
            ));
        }
    }
    let teacher = obj
        .get("teacher")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("field `{at}.teacher`: missing (the model to learn from)"))?
        .to_string();
    let list = obj
        .get("data")
        .and_then(Value::as_array)
        .filter(|l| !l.is_empty())
        .ok_or_else(|| {
            format!("field `{at}.data`: expected a non-empty list of `{{task: NAME, split: SPLIT}}` or `{{text: FILE}}`")
        })?;
    let data = list
        .iter()
        .enumerate()
        .map(|(j, v)| source(v, &format!("{at}.data[{j}]"), false))
        .collect::<Result<Vec<_>, _>>()?;
    let held_out = obj
        .get("held_out")
        .map(|v| source(v, &format!("{at}.held_out"), true))
        .transpose()?;
    let steps = match obj.get("steps") {
        None => {
            return Err(format!(
                "field `{at}.steps`: missing (optimizer steps, ≥ 1)"
            ))
        }
        Some(_) => whole(obj, "steps", at, 0)? as usize,
    };
    if steps == 0 {
        return Err(format!(
            "field `{at}.steps`: 0 would train nothing; give at least 1"
        ));
    }
    let batch = whole(obj, "batch", at, 4)? as usize;
    if batch == 0 {
        return Err(format!("field `{at}.batch`: must be at least 1"));
    }
    let seq_len = whole(obj, "seq_len", at, 128)? as usize;
    if seq_len < 2 {
        return Err(format!(
            "field `{at}.seq_len`: {seq_len} tokens cannot hold a next-token target; give at least 2"
        ));
    }
    let lr = real(obj, "lr", at, 5e-5)?;
    if lr <= 0.0 {
        return Err(format!("field `{at}.lr`: {lr} must be > 0"));
    }
    let temperature = real(obj, "temperature", at, 1.0)?;
    if temperature <= 0.0 {
        return Err(format!(
            "field `{at}.temperature`: {temperature} must be > 0"
        ));
    }
    let alpha = real(obj, "alpha", at, 1.0)?;
    if !(0.0..=1.0).contains(&alpha) {
        return Err(format!(
            "field `{at}.alpha`: {alpha} must be in [0, 1] (the KL term's weight)"
        ));
    }
    let checkpoint_every = whole(obj, "checkpoint_every", at, 25)? as usize;
    if checkpoint_every == 0 {
        return Err(format!("field `{at}.checkpoint_every`: must be at least 1"));
    }
    Ok(Distill {
        teacher,
        data,
        held_out,
        steps,
        batch,
        seq_len,
        lr,
        temperature,
        alpha,
        seed: whole(obj, "seed", at, 1)?,
        checkpoint_every,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(yaml: &str) -> Result<Distill, String> {
        let v: Value = serde_saphyr::from_str(yaml).expect("yaml");
        parse(&v, "steps[1].distill")
    }

    #[test]
    fn a_full_step_parses_with_defaults() {
        let d = p("teacher: t\ndata: [{task: arc_easy, split: train, limit: 10}, {text: a.txt}]\nsteps: 3\n")
            .expect("parse");
        assert_eq!(d.steps, 3);
        assert_eq!((d.batch, d.seq_len, d.lr, d.alpha), (4, 128, 5e-5, 1.0));
        assert_eq!(d.data[0].label(), "arc_easy/train (first 10)");
        assert_eq!(
            d.data[1],
            CorpusSource::Text {
                text: "a.txt".into()
            }
        );
        // checkpoint_every is not part of what the step computes.
        let json = serde_json::to_string(&d).expect("json");
        assert!(!json.contains("checkpoint"), "{json}");
    }

    #[test]
    fn bad_steps_name_the_field() {
        for (yaml, needle) in [
            ("data: [{text: a}]\nsteps: 1", "steps[1].distill.teacher"),
            ("teacher: t\nsteps: 1", "steps[1].distill.data"),
            ("teacher: t\ndata: [{text: a}]", "steps[1].distill.steps"),
            (
                "teacher: t\ndata: [{text: a}]\nsteps: 0",
                "steps[1].distill.steps",
            ),
            (
                "teacher: t\ndata: [{text: a}]\nsteps: 2\nlr: -1",
                "steps[1].distill.lr",
            ),
            (
                "teacher: t\ndata: [{text: a}]\nsteps: 2\nalpha: 2",
                "steps[1].distill.alpha",
            ),
            (
                "teacher: t\ndata: [{task: copa}]\nsteps: 2",
                "steps[1].distill.data[0].split",
            ),
            (
                "teacher: t\ndata: [{text: a}]\nsteps: 2\nepochs: 2",
                "steps[1].distill.epochs",
            ),
            (
                "teacher: t\ndata: [{text: a}]\nsteps: 2\nseq_len: 1",
                "steps[1].distill.seq_len",
            ),
            (
                "teacher: t\ndata: [{text: a}]\nsteps: 2\nheld_out: {text: b}",
                "steps[1].distill.held_out.text",
            ),
        ] {
            let e = p(yaml).expect_err(yaml);
            assert_eq!(e.lines().count(), 1, "{e}");
            assert!(e.contains(needle), "`{needle}` not in: {e}");
        }
    }
}
