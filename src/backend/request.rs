//! Requests as lm-eval builds them, shared by every backend that tokenizes.

use crate::model::tokenizer::{TextTokenizer, TokenizerError};

/// Token ids for one (context, continuation) pair, as lm-eval builds them:
/// trailing whitespace of the context moves to the continuation, the pair is
/// tokenized as one string and split at the context's token length.
pub fn encode_pair(
    tok: &TextTokenizer,
    context: &str,
    continuation: &str,
) -> Result<(Vec<u32>, Vec<u32>), TokenizerError> {
    let trimmed = context.trim_end();
    let (context, continuation) = if trimmed.len() < context.len() {
        (
            trimmed,
            format!("{}{}", &context[trimmed.len()..], continuation),
        )
    } else {
        (context, continuation.to_string())
    };
    let with_bos = |mut ids: Vec<u32>| {
        if let (true, Some(b)) = (tok.add_bos, tok.bos_id) {
            ids.insert(0, b);
        }
        ids
    };
    if context.is_empty() {
        // lm-eval scores an empty context after a single prefix token.
        let prefix = tok.bos_id.or(tok.eos_id).into_iter().collect();
        return Ok((prefix, tok.encode(&continuation)?));
    }
    let whole = with_bos(tok.encode(&format!("{context}{continuation}"))?);
    let ctx = with_bos(tok.encode(context)?);
    let cont = whole.get(ctx.len()..).unwrap_or_default().to_vec();
    Ok((ctx, cont))
}

/// Byte offset of the earliest occurrence of any non-empty stop string in
/// `text` (lm-eval splits at each `until` string in turn, which keeps the
/// text before the earliest one).
pub fn until_cut(text: &str, until: &[String]) -> Option<usize> {
    until
        .iter()
        .filter(|u| !u.is_empty())
        .filter_map(|u| text.find(u.as_str()))
        .min()
}

#[cfg(test)]
mod until_tests {
    use super::until_cut;

    #[test]
    fn earliest_stop_wins_and_empty_is_ignored() {
        let until = vec!["Question:".to_string(), "\n\n".to_string(), String::new()];
        assert_eq!(until_cut("a\n\nQuestion: b", &until), Some(1));
        assert_eq!(until_cut("a Question:\n\n", &until), Some(2));
        assert_eq!(until_cut("nothing", &until), None);
    }
}
