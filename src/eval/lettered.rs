//! Multiple choice by generation, for engines that return no
//! log-probabilities (chat endpoints): the prompt lists the choices under
//! letters and asks for the letter; the reply's letter is the prediction.
//!
//! The prompt, after the task's own (few-shot) prompt:
//!
//! ```text
//! {prompt}
//!
//! A. {choice 1}
//! B. {choice 2}
//! …
//! Answer with the letter of the correct choice only.
//! ```
//!
//! The reply is read as: the first standalone capital letter among the
//! offered ones (`B`, `(B)`, `B.`, `Answer: B`); a reply that names none
//! is `[invalid]` and counts as wrong. Metric: `acc`.

use regex::Regex;

use super::generate::{Judge, INVALID};
use crate::task::Instance;

/// Letters for up to 26 choices.
fn letter(i: usize) -> char {
    (b'A' + (i % 26) as u8) as char
}

/// The prompt listing `inst`'s choices under letters.
pub fn prompt(inst: &Instance) -> String {
    let mut s = inst.context.trim_end().to_string();
    s.push_str("\n\n");
    for (i, c) in inst.choices.iter().enumerate() {
        s.push_str(&format!("{}. {}\n", letter(i), c.trim()));
    }
    s.push_str("Answer with the letter of the correct choice only.");
    s
}

/// The offered letter a reply names first, if any.
pub fn parse(reply: &str, n_choices: usize) -> Option<usize> {
    static LETTER: std::sync::LazyLock<Option<Regex>> =
        std::sync::LazyLock::new(|| Regex::new(r"\b([A-Z])\b").ok());
    let re = LETTER.as_ref()?;
    let found = re
        .captures_iter(reply)
        .filter_map(|c| c.get(1))
        .map(|m| (m.as_str().as_bytes()[0] - b'A') as usize)
        .find(|&i| i < n_choices);
    found
}

/// The judge of a multiple-choice task asked by letter.
pub fn judge() -> Judge<'static> {
    Judge {
        keys: vec!["acc".to_string()],
        until: Vec::new(),
        max_gen_toks: 16,
        prompt: Box::new(prompt),
        // The lettered prompt replaces the task's: one user turn.
        conversation: false,
        judge: Box::new(|inst, text| {
            let gold = letter(inst.gold).to_string();
            let (answer, acc) = match parse(text, inst.choices.len()) {
                Some(i) => (letter(i).to_string(), f64::from(u8::from(i == inst.gold))),
                None => (INVALID.to_string(), 0.0),
            };
            (gold, vec![("letter".to_string(), answer)], vec![acc])
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_read_by_their_first_offered_letter() {
        assert_eq!(parse("B", 4), Some(1));
        assert_eq!(parse("(C) because", 4), Some(2));
        assert_eq!(parse("Answer: D.", 4), Some(3));
        // `E` is not offered among four choices; `I` is a word.
        assert_eq!(parse("E, I think B", 4), Some(1));
        assert_eq!(parse("none of them", 4), None);
        assert_eq!(parse("", 2), None);
    }

    #[test]
    fn the_prompt_lists_trimmed_choices_under_letters() {
        let inst = Instance {
            doc_id: 0,
            context: "Question: Which is a mammal?\nAnswer:".into(),
            choices: vec![" dog".into(), " fish".into()],
            continuations: vec![],
            gold: 0,
            target: None,
            messages: None,
        };
        assert_eq!(
            prompt(&inst),
            "Question: Which is a mammal?\nAnswer:\n\nA. dog\nB. fish\nAnswer with the letter of the correct choice only."
        );
    }
}
