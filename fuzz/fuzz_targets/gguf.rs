//! The GGUF reader: metadata, tensor directory and tensor reads, and what
//! is built from metadata alone (tokenizer, chat template, file type).
#![no_main]

use libfuzzer_sys::fuzz_target;
use slmbench::model::chat::ChatTemplate;
use slmbench::model::gguf::{file_type_name, GgufFile};
use slmbench::model::tokenizer::TextTokenizer;
use slmbench::task::Message;

mod common;

fuzz_target!(|data: &[u8]| {
    let path = common::scratch_file("model.gguf", data);
    let mut g = match GgufFile::open(&path) {
        Ok(g) => g,
        Err(e) => return common::one_line(&e),
    };
    let _ = g.architecture();
    let _ = file_type_name(&g);
    let _ = g.weight_types();
    for name in g.tensor_names().into_iter().take(8) {
        if let Ok(t) = g.tensor(&name) {
            // Dequantize only small tensors: the extent check has already
            // bounded what the file can claim, not what memory allows.
            if t.shape().elem_count() <= 1 << 16 {
                let _ = t.dequantize(&candle_core::Device::Cpu);
            }
        }
    }
    if let Some(chat) = ChatTemplate::from_gguf(&g) {
        let msgs = [Message::new("system", "s"), Message::new("user", "Hi")];
        if let Err(e) = chat.render(&msgs, true) {
            common::one_line(&e);
        }
    }
    match TextTokenizer::from_gguf(&g) {
        Ok(t) => {
            if let Ok(ids) = t.encode("Hello, world! 12") {
                let _ = t.decode(&ids);
            }
        }
        Err(e) => common::one_line(&e),
    }
});
