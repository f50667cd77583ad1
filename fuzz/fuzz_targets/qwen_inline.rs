//! The Qwen shape's inline references: for edits and variations, URLs and data URLs written in an
//! `input.messages[].content` string are taken out in order as the input images and the rest is
//! the prompt (seed 000); for generations the string is the prompt, untouched apart from trimming.
#![no_main]

use easel_types::types::Operation;
use easel_wire::request::{UnknownParams, parse_json};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

/// A word `extract_inline` takes out, by the rule the module documents.
fn is_reference(word: &str) -> bool {
    let core =
        word.trim_start_matches(['(', '<', '[', '"', '\'']).trim_end_matches([')', '>', ']', '"', '\'', ',', ';', '.']);
    core.starts_with("https://") || core.starts_with("http://") || core.starts_with("data:image/")
}

fuzz_target!(|data: &[u8]| {
    let Ok(content) = std::str::from_utf8(data) else { return };
    let body = json!({"model": "m", "input": {"messages": [{"role": "user", "content": content}]}});
    let body = serde_json::to_vec(&body).unwrap();
    for &operation in Operation::ALL {
        for unknown in [UnknownParams::Reject, UnknownParams::Ignore] {
            let Ok(request) = parse_json(operation, &body, unknown) else { continue };
            assert_eq!(request.operation, operation);
            let prompt = request.prompt.as_deref().unwrap_or("");
            if operation == Operation::Generate {
                assert_eq!(prompt, content.trim(), "a generation's prompt is the content");
                assert!(request.images.is_empty());
            } else {
                let references = content.split_whitespace().filter(|w| is_reference(w)).count();
                assert_eq!(request.images.len(), references, "every inline reference is an image");
                assert!(!prompt.split_whitespace().any(is_reference), "a reference left in the prompt: {prompt:?}");
            }
        }
    }
});
