//! Chat templates as a model file carries them: the template text, then
//! (after a NUL byte) the conversation as a JSON array of messages.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slmbench::model::chat::ChatTemplate;
use slmbench::task::Message;

mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (template, conv) = text.split_once('\0').unwrap_or((text, "[]"));
    let messages: Vec<Message> = serde_json::from_str(conv).unwrap_or_else(|_| {
        vec![
            Message::new("system", "You are terse."),
            Message::new("user", conv),
        ]
    });
    let chat = ChatTemplate {
        source_name: "fuzz (chat_template)".into(),
        template: template.to_string(),
        bos_token: "<s>".into(),
        eos_token: "</s>".into(),
    };
    for add_generation_prompt in [false, true] {
        if let Err(e) = chat.render(&messages, add_generation_prompt) {
            common::one_line(&e);
        }
    }
});
