//! Request construction: turns a task's documents into the scored
//! [`Instance`]s, reproducing lm-eval 0.4.13's `fewshot_context` for
//! `multiple_choice` (plain text, no chat template):
//!
//! `context = description + Σ(fewshot: text + target_delimiter + gold choice + fewshot_delimiter) + text`
//!
//! and `continuations[i] = target_delimiter + choices[i]`. A `generate_until`
//! task's context is built the same way, its few-shot answers being
//! `doc_to_target` as text; it has a target instead of choices. Whitespace is left
//! exactly as lm-eval produces it; moving it between context and
//! continuation is the model layer's job.

use minijinja::value::Value;

use super::chat::{append_question, ChatOptions, Message};
use super::data::{SplitDocs, TaskDocs};
use super::error::TaskError;
use super::fewshot::{excludes_eval_doc, FewshotSampler};
use super::spec::TaskSpec;
use super::template::TaskTemplates;

/// lm-eval's default few-shot seed (`--fewshot_random_seed`).
pub const DEFAULT_FEWSHOT_SEED: u64 = 1234;

/// One evaluated document as a multiple-choice request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Index of the document in the evaluated split (file order).
    pub doc_id: usize,
    /// The prompt scored before every continuation.
    pub context: String,
    /// The choices as `doc_to_choice` gives them (lm-eval's `acc_norm` divides by their length).
    pub choices: Vec<String>,
    /// `target_delimiter + choice`, one per choice.
    pub continuations: Vec<String>,
    /// Index of the gold choice (0 for a generation task).
    pub gold: usize,
    /// A `generate_until` task's reference answer (`doc_to_target` as text);
    /// `None` for a multiple-choice task, whose choices and continuations
    /// are then empty.
    pub target: Option<String>,
    /// With `--apply-chat-template`: the conversation a model's chat
    /// template renders into the prompt (then the continuations have no
    /// `target_delimiter`, as lm-eval scores them).
    pub messages: Option<Vec<Message>>,
}

/// Options for [`build_instances`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOptions {
    /// Evaluate only the first `limit` documents (file order).
    pub limit: Option<usize>,
    /// Overrides the task's `num_fewshot`.
    pub num_fewshot: Option<usize>,
    /// Few-shot sampling seed (default 1234, as lm-eval).
    pub seed: u64,
    /// `--system-instruction`: put before the description (a system turn
    /// under a chat template).
    pub system_instruction: Option<String>,
    /// `--apply-chat-template`: build each request as a conversation too.
    pub chat: Option<ChatOptions>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            limit: None,
            num_fewshot: None,
            seed: DEFAULT_FEWSHOT_SEED,
            system_instruction: None,
            chat: None,
        }
    }
}

impl BuildOptions {
    /// The number of few-shot examples in effect for `spec`.
    pub fn effective_fewshot(&self, spec: &TaskSpec) -> usize {
        self.num_fewshot.unwrap_or(spec.num_fewshot)
    }
}

/// Builds one [`Instance`] per evaluated document (the first `opts.limit` ones).
pub fn build_instances(
    spec: &TaskSpec,
    docs: &TaskDocs,
    opts: &BuildOptions,
) -> Result<Vec<Instance>, TaskError> {
    let templates = TaskTemplates::new(spec)?;
    let generate = spec.generation.is_some();
    let num_fewshot = opts.effective_fewshot(spec);
    let build_err = |message: String, fix: &str| TaskError::Build {
        task: spec.name.clone(),
        message,
        fix: fix.to_string(),
    };
    let pool = match (&docs.fewshot, num_fewshot) {
        (_, 0) => None,
        (Some(pool), _) if pool.is_empty() => {
            return Err(build_err(
                format!(
                    "few-shot split `{}` ({}) has no documents",
                    pool.split, pool.file
                ),
                "use --num-fewshot 0 or provide a non-empty few-shot split",
            ))
        }
        (Some(pool), _) => Some(pool),
        (None, _) => {
            return Err(build_err(
                format!("{num_fewshot}-shot requested but no few-shot documents were loaded"),
                "load the documents with TaskDocs::load(spec, data, num_fewshot)",
            ))
        }
    };
    let mut sampler = pool.map(|p| FewshotSampler::new(&p.docs, spec.sampler, opts.seed));
    let exclude = excludes_eval_doc(spec);
    let n_docs = opts
        .limit
        .map_or(docs.eval.len(), |l| l.min(docs.eval.len()));
    if n_docs == 0 && opts.limit != Some(0) {
        return Err(build_err(
            format!(
                "split `{}` ({}) has no documents",
                docs.eval.split, docs.eval.file
            ),
            "check the data file",
        ));
    }
    let mut out = Vec::with_capacity(n_docs);
    for (doc_id, doc) in docs.eval.docs.iter().take(n_docs).enumerate() {
        let loc = docs.eval.location(doc_id);
        let ctx = Value::from_serialize(doc);
        let description = templates.description(doc, &ctx, &loc)?;
        // lm-eval's system prompt: the instruction, then the description.
        let system = match (&opts.system_instruction, description.is_empty()) {
            (Some(i), false) => format!("{i}{}{description}", spec.fewshot_delimiter),
            (Some(i), true) => i.clone(),
            (None, _) => description,
        };
        let mut context = system.clone();
        // (question, answer) of each few-shot example.
        let mut shots: Vec<(String, String)> = Vec::new();
        if let (Some(sampler), Some(pool)) = (sampler.as_mut(), pool) {
            let picks = sampler
                .sample(num_fewshot, exclude.then_some(doc))
                .map_err(|m| {
                    build_err(
                        format!("{m} (split `{}`)", pool.split),
                        "lower --num-fewshot",
                    )
                })?;
            for j in picks {
                shots.push(answered(&templates, generate, pool, j)?);
            }
        }
        let fewshot: String = shots
            .iter()
            .map(|(q, a)| format!("{q}{}{a}{}", spec.target_delimiter, spec.fewshot_delimiter))
            .collect();
        context.push_str(&fewshot);
        let question = templates.text(doc, &ctx, &loc)?;
        context.push_str(&question);
        let messages = opts.chat.as_ref().map(|c| {
            let mut chat = Vec::new();
            if !system.is_empty() {
                chat.push(Message::new("system", system.clone()));
            }
            if c.fewshot_as_multiturn {
                for (q, a) in &shots {
                    chat.push(Message::new("user", q.clone()));
                    chat.push(Message::new("assistant", a.clone()));
                }
            } else if !shots.is_empty() {
                chat.push(Message::new("user", fewshot.clone()));
            }
            append_question(&mut chat, &question, c.fewshot_as_multiturn);
            chat
        });
        if generate {
            out.push(Instance {
                doc_id,
                context,
                choices: Vec::new(),
                continuations: Vec::new(),
                gold: 0,
                target: Some(templates.target_text(doc, &ctx, &loc)?),
                messages,
            });
            continue;
        }
        let choices = templates.choices(doc, &ctx, &loc)?;
        let gold = templates.gold(doc, &ctx, &choices, &loc)?;
        // Under a chat template the answer follows the assistant's turn
        // directly: lm-eval drops the target delimiter.
        let delimiter = if messages.is_some() {
            ""
        } else {
            spec.target_delimiter.as_str()
        };
        let continuations = choices.iter().map(|c| format!("{delimiter}{c}")).collect();
        out.push(Instance {
            doc_id,
            context,
            choices,
            continuations,
            gold,
            target: None,
            messages,
        });
    }
    Ok(out)
}

/// Document `j` of `docs` as a question and its gold answer (the choice
/// text, or a generation task's target): what a few-shot example shows.
fn answered(
    templates: &TaskTemplates,
    generate: bool,
    docs: &SplitDocs,
    j: usize,
) -> Result<(String, String), TaskError> {
    let doc = &docs.docs[j];
    let loc = docs.location(j);
    let ctx = Value::from_serialize(doc);
    let text = templates.text(doc, &ctx, &loc)?;
    let answer = if generate {
        templates.target_text(doc, &ctx, &loc)?
    } else {
        let choices = templates.choices(doc, &ctx, &loc)?;
        let gold = templates.gold(doc, &ctx, &choices, &loc)?;
        choices[gold].clone()
    };
    Ok((text, answer))
}

/// The first `limit` documents of `docs` (all when `None`) rendered as
/// few-shot examples are, `doc_to_text + target_delimiter + answer`: the
/// training text a `distill` step reads from a task's split.
pub fn answered_examples(
    spec: &TaskSpec,
    docs: &SplitDocs,
    limit: Option<usize>,
) -> Result<Vec<String>, TaskError> {
    let templates = TaskTemplates::new(spec)?;
    let n = limit.map_or(docs.len(), |l| l.min(docs.len()));
    (0..n)
        .map(|j| {
            answered(&templates, spec.generation.is_some(), docs, j)
                .map(|(q, a)| format!("{q}{}{a}", spec.target_delimiter))
        })
        .collect()
}
