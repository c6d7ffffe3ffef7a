//! The conversation form of a request: what `--apply-chat-template` turns a
//! prompt into before a model's chat template renders it (lm-eval 0.4.13's
//! `fewshot_context` with `apply_chat_template`).

use serde::{Deserialize, Serialize};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.to_string(),
            content: content.into(),
        }
    }
}

/// How prompts are put to a chat model (lm-eval's flags of the same names).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ChatOptions {
    /// `--fewshot-as-multiturn`: each few-shot example a user turn and its
    /// answer an assistant turn (else all examples open the one user turn).
    pub fewshot_as_multiturn: bool,
}

/// lm-eval's `append_target_question`: the question opens a new user turn
/// after a system turn, in multi-turn few-shot, or in an empty chat; else
/// it is appended to the user turn holding the few-shot examples.
pub(crate) fn append_question(chat: &mut Vec<Message>, question: &str, multiturn: bool) {
    match chat.last_mut() {
        Some(last) if !multiturn && last.role != "system" => last.content.push_str(question),
        _ => chat.push(Message::new("user", question)),
    }
}
