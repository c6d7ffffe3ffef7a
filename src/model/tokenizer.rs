//! Tokenizers built from GGUF metadata (or read from a `tokenizer.json`).
//!
//! GGUF files carry the vocabulary, not a `tokenizer.json`; this module turns
//! `tokenizer.ggml.*` metadata into a `tokenizers::Tokenizer` the way
//! transformers' GGUF converter and llama.cpp tokenize: GPT-2-style byte-level
//! BPE with the pre-tokenizer named by `tokenizer.ggml.pre`, or a
//! SentencePiece-style BPE (merges derived from scores, byte fallback) for
//! `tokenizer.ggml.model = llama`. An unknown pre-tokenizer is an error.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::model::gguf::{GgufError, GgufFile};
use crate::task::escaped;

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;

/// The values these errors quote come from the model file (a token, a
/// metadata string): control characters in them are escaped, so the error
/// stays on one line (found by the `gguf` fuzz target).
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{path}: unknown pre-tokenizer `tokenizer.ggml.pre = {}`; known: {known}. Give the model a `tokenizer:` path to a tokenizer.json in models.yaml", escaped(pre))]
    UnknownPre {
        path: PathBuf,
        pre: String,
        known: String,
    },
    #[error("{path}: unsupported tokenizer model `tokenizer.ggml.model = {}` (supported: gpt2, llama); give a `tokenizer:` path to a tokenizer.json in models.yaml", escaped(model))]
    UnknownModel { path: PathBuf, model: String },
    #[error("{path}: cannot build tokenizer: {}", escaped(reason))]
    Build { path: PathBuf, reason: String },
    #[error("cannot tokenize text: {}", escaped(.0))]
    Encode(String),
}

/// Pre-tokenizer regexes of the GPT-2-style BPE families we know, by the name
/// llama.cpp's converter writes into `tokenizer.ggml.pre`.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const KNOWN_PRE: &[&str] = &["gpt-2", "default", "smollm", "qwen2", "llama-bpe"];

/// A tokenizer plus the special-token facts scoring needs.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    /// Beginning-of-sequence id, if the model has one.
    pub bos_id: Option<u32>,
    /// Whether the model expects BOS before every sequence (`add_bos_token`).
    pub add_bos: bool,
    pub eos_id: Option<u32>,
}

impl TextTokenizer {
    /// Ids of `text` without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, false)
            .map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    /// Text of `ids` with special tokens left out (what lm-eval's
    /// `tok_decode` returns for a generation).
    pub fn decode_text(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Reads a `tokenizer.json`; special-token facts come from the GGUF when given.
    pub fn from_json_file(path: &Path, gguf: Option<&GgufFile>) -> Result<Self, TokenizerError> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| TokenizerError::Build {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let (bos_id, add_bos, eos_id) = match gguf {
            Some(g) => special_facts(g),
            None => (None, false, None),
        };
        Ok(Self {
            inner,
            bos_id,
            add_bos,
            eos_id,
        })
    }

    /// A tokenizer on its own, for a served model: the vocabulary of a
    /// GGUF file (with its BOS rule), or a `tokenizer.json` whose BOS rule
    /// is what its post-processor adds before a text (Hugging Face's
    /// `add_special_tokens=True`).
    pub fn open_standalone(path: &Path) -> Result<Self, TokenizerError> {
        let mut magic = [0u8; 4];
        let is_gguf = std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .is_ok()
            && &magic == b"GGUF";
        if is_gguf {
            return Self::from_gguf(&GgufFile::open(path)?);
        }
        let mut tok = Self::from_json_file(path, None)?;
        let enc = |special: bool| {
            tok.inner
                .encode("a", special)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| TokenizerError::Build {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })
        };
        let (plain, special) = (enc(false)?, enc(true)?);
        if special.len() > plain.len() && special[1..].starts_with(&plain) {
            tok.bos_id = special.first().copied();
            tok.add_bos = true;
        }
        Ok(tok)
    }

    /// Builds the tokenizer from `tokenizer.ggml.*` metadata.
    pub fn from_gguf(g: &GgufFile) -> Result<Self, TokenizerError> {
        let inner = GgufBpe::read(g)?.build(g)?;
        let (bos_id, add_bos, eos_id) = special_facts(g);
        Ok(Self {
            inner,
            bos_id,
            add_bos,
            eos_id,
        })
    }
}

fn special_facts(g: &GgufFile) -> (Option<u32>, bool, Option<u32>) {
    let bos = g.opt_u32("tokenizer.ggml.bos_token_id");
    let eos = g.opt_u32("tokenizer.ggml.eos_token_id");
    // llama.cpp's default: SentencePiece vocabularies add BOS, BPE ones do not.
    let spm = g
        .string("tokenizer.ggml.model")
        .map(|m| m == "llama")
        .unwrap_or(false);
    let add_bos = g.bool_or("tokenizer.ggml.add_bos_token", spm) && bos.is_some();
    (bos, add_bos, eos)
}

/// The `tokenizer.json` equivalent of a GGUF vocabulary.
pub fn tokenizer_json_from_gguf(g: &GgufFile) -> Result<Value, TokenizerError> {
    Ok(GgufBpe::read(g)?.into_json())
}

/// A GGUF vocabulary as a `tokenizers` BPE: a small `tokenizer.json` shell
/// (normalizer, pre-tokenizer, decoder, the model's flags; no vocabulary,
/// merges or added tokens) plus those large parts as plain data. The
/// tokenizer is built from the parts directly, because going through a JSON
/// value of a 262k vocabulary peaks at several hundred MB.
struct GgufBpe {
    shell: Value,
    tokens: Vec<String>,
    merges: Vec<(String, String)>,
    /// `(content, special)` of the tokens matched before the model runs.
    added: Vec<(String, bool)>,
}

impl GgufBpe {
    fn read(g: &GgufFile) -> Result<Self, TokenizerError> {
        let model = g.string("tokenizer.ggml.model")?;
        let tokens = g.strings("tokenizer.ggml.tokens")?;
        let types = if g.has("tokenizer.ggml.token_type") {
            g.i32s("tokenizer.ggml.token_type")?
        } else {
            vec![TOKEN_NORMAL; tokens.len()]
        };
        let added = added_tokens(&tokens, &types);
        let (shell, merges) = match model.as_str() {
            "gpt2" => {
                let pre = if g.has("tokenizer.ggml.pre") {
                    g.string("tokenizer.ggml.pre")?
                } else {
                    "default".to_string()
                };
                let merges = g
                    .strings("tokenizer.ggml.merges")?
                    .iter()
                    .filter_map(|m| m.split_once(' '))
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect();
                (gpt2_shell(g, &pre)?, merges)
            }
            "llama" => {
                let scores = g.f32s("tokenizer.ggml.scores")?;
                (spm_shell(g, &tokens), spm_merges(&tokens, &types, &scores))
            }
            other => {
                return Err(TokenizerError::UnknownModel {
                    path: g.path.clone(),
                    model: other.to_string(),
                })
            }
        };
        Ok(Self {
            shell,
            tokens,
            merges,
            added,
        })
    }

    /// Token → id; on duplicate pieces the first id, as SentencePiece does
    /// (collected in reverse, so the first id is written last).
    fn vocab<V: FromIterator<(String, u32)>>(&self) -> V {
        self.tokens
            .iter()
            .enumerate()
            .rev()
            .map(|(id, t)| (t.clone(), id as u32))
            .collect()
    }

    fn into_json(self) -> Value {
        let mut json = self.shell.clone();
        let mut vocab = serde_json::Map::with_capacity(self.tokens.len());
        for (id, t) in self.tokens.iter().enumerate() {
            vocab.entry(t.clone()).or_insert(json!(id));
        }
        json["added_tokens"] = self
            .added
            .iter()
            .map(|(content, special)| {
                json!({
                    "id": vocab.get(content), "content": content,
                    "single_word": false, "lstrip": false, "rstrip": false,
                    "normalized": false, "special": special,
                })
            })
            .collect();
        json["model"]["vocab"] = Value::Object(vocab);
        json["model"]["merges"] = self.merges.iter().map(|(a, b)| json!([a, b])).collect();
        json
    }

    fn build(mut self, g: &GgufFile) -> Result<tokenizers::Tokenizer, TokenizerError> {
        let err = |reason: String| TokenizerError::Build {
            path: g.path.clone(),
            reason,
        };
        let flag = |k: &str| self.shell["model"][k].as_bool().unwrap_or(false);
        let mut bpe = tokenizers::models::bpe::BPE::builder()
            .vocab_and_merges(
                self.vocab::<tokenizers::models::bpe::Vocab>(),
                std::mem::take(&mut self.merges),
            )
            .fuse_unk(flag("fuse_unk"))
            .byte_fallback(flag("byte_fallback"))
            .ignore_merges(flag("ignore_merges"));
        if let Some(unk) = self.shell["model"]["unk_token"].as_str() {
            bpe = bpe.unk_token(unk.to_string());
        }
        let bpe = bpe.build().map_err(|e| err(e.to_string()))?;
        let mut tok: tokenizers::Tokenizer =
            serde_json::from_value(self.shell).map_err(|e| err(e.to_string()))?;
        tok.with_model(bpe);
        // As tokenizers' own deserializer does: added tokens after the model,
        // their ids looked up in its vocabulary.
        tok.add_tokens(
            self.added
                .iter()
                .map(|(content, special)| {
                    tokenizers::AddedToken::from(content.clone(), *special)
                        .single_word(false)
                        .lstrip(false)
                        .rstrip(false)
                        .normalized(false)
                })
                .collect::<Vec<_>>(),
        )
        .map_err(|e| err(e.to_string()))?;
        Ok(tok)
    }
}

/// Control tokens become special added tokens; user-defined ones are matched
/// verbatim before the model runs, as llama.cpp does.
fn added_tokens(tokens: &[String], types: &[i32]) -> Vec<(String, bool)> {
    tokens
        .iter()
        .zip(types)
        .filter(|(_, &t)| t == TOKEN_CONTROL || t == TOKEN_USER_DEFINED)
        .map(|(content, &t)| (content.clone(), t == TOKEN_CONTROL))
        .collect()
}

/// The model part of a shell: a BPE with an empty vocabulary.
fn bpe_shell(unk: Option<String>, spm: bool, ignore_merges: bool) -> Value {
    json!({
        "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
        "end_of_word_suffix": null, "fuse_unk": spm, "byte_fallback": spm,
        "ignore_merges": ignore_merges, "vocab": {}, "merges": [],
    })
}

fn gpt2_shell(g: &GgufFile, pre: &str) -> Result<Value, TokenizerError> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |re: &str| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
    let (pre_tokenizer, ignore_merges) = match pre {
        "gpt-2" | "default" => (byte_level(true), false),
        "smollm" => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            false,
        ),
        "qwen2" => (
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), byte_level(false)]}),
            false,
        ),
        "llama-bpe" => (
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level(false)]}),
            true,
        ),
        other => {
            return Err(TokenizerError::UnknownPre {
                path: g.path.clone(),
                pre: other.to_string(),
                known: KNOWN_PRE.join(", "),
            })
        }
    };
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": bpe_shell(None, false, ignore_merges),
    }))
}

/// SentencePiece BPE as a `tokenizers` BPE: merges are every split of a
/// normal piece into two known pieces, ranked by the merged piece's score
/// (SentencePiece merges the pair whose result scores highest).
///
/// Gemma 3's 262k pieces give ~0.5M merges; the splits are looked up in
/// an `ahash` map (the hasher `tokenizers` itself uses), the right half
/// only when the left one is known, and the pieces are split on rayon's
/// threads (std's SipHash on one thread made it a visible part of every
/// Gemma 3 start).
fn spm_merges(tokens: &[String], types: &[i32], scores: &[f32]) -> Vec<(String, String)> {
    use rayon::prelude::*;
    let index: ahash::AHashMap<&str, u32> = tokens
        .iter()
        .enumerate()
        .rev()
        .map(|(i, t)| (t.as_str(), i as u32))
        .collect();
    let index = &index;
    let mut merges: Vec<(f32, u32, u32, u32)> = tokens
        .par_iter()
        .enumerate()
        .filter(|&(id, _)| types.get(id).copied().unwrap_or(TOKEN_NORMAL) == TOKEN_NORMAL)
        .flat_map_iter(|(id, piece)| {
            let score = scores.get(id).copied().unwrap_or(0.0);
            piece.char_indices().skip(1).filter_map(move |(cut, _)| {
                let (l, r) = piece.split_at(cut);
                let li = *index.get(l)?;
                let ri = *index.get(r)?;
                Some((score, id as u32, li, ri))
            })
        })
        .collect();
    // (score, id, left, right) is unique per merge: an unstable sort gives
    // the one order.
    merges.par_sort_unstable_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(a.1.cmp(&b.1))
            .then(a.2.cmp(&b.2))
            .then(a.3.cmp(&b.3))
    });
    merges
        .par_iter()
        .map(|&(_, _, l, r)| (tokens[l as usize].clone(), tokens[r as usize].clone()))
        .collect()
}

fn spm_shell(g: &GgufFile, tokens: &[String]) -> Value {
    let unk = g
        .opt_u32("tokenizer.ggml.unknown_token_id")
        .and_then(|i| tokens.get(i as usize).cloned());
    let add_space_prefix = g.bool_or("tokenizer.ggml.add_space_prefix", true);
    let normalizer = if add_space_prefix {
        json!({"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u{2581}"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}]})
    } else {
        json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"})
    };
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [],
        "normalizer": normalizer,
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": bpe_shell(unk, true, false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `gguf` fuzz target: a vocabulary whose special token
    /// held a newline made "cannot build tokenizer" a two-line error.
    #[test]
    fn a_token_or_metadata_value_with_control_characters_stays_on_one_line() {
        let path = PathBuf::from("m.gguf");
        let errors = [
            TokenizerError::Build {
                path: path.clone(),
                reason: "Token `\u{1}\n` out of vocabulary".into(),
            },
            TokenizerError::UnknownPre {
                path: path.clone(),
                pre: "qwen\n2".into(),
                known: KNOWN_PRE.join(", "),
            },
            TokenizerError::UnknownModel {
                path,
                model: "bpe\r\n".into(),
            },
            TokenizerError::Encode("bad\ntext".into()),
        ];
        for e in errors {
            let text = e.to_string();
            assert!(!text.chars().any(char::is_control), "{text:?}");
        }
        let build = TokenizerError::Build {
            path: PathBuf::from("m.gguf"),
            reason: "Token `\u{1}\n` out of vocabulary".into(),
        };
        assert_eq!(
            build.to_string(),
            "m.gguf: cannot build tokenizer: Token `\\u{1}\\n` out of vocabulary"
        );
    }
}
