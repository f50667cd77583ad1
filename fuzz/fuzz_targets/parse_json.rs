//! Every JSON dialect: `easel_wire::request::parse_json` for each `Operation`, in both
//! `UnknownParams` modes, on the raw body (OpenAI generations and JSON edits, IG1's body, the
//! Qwen `input.messages` shape all go through it).
//!
//! Beyond "no panic": a request that parses says the operation it was parsed for, and a body the
//! strict mode accepts parses to the same request in the lenient mode (lenient only drops keys).
#![no_main]

use easel_types::types::Operation;
use easel_wire::request::{UnknownParams, parse_json};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    for &operation in Operation::ALL {
        let strict = parse_json(operation, body, UnknownParams::Reject);
        let lenient = parse_json(operation, body, UnknownParams::Ignore);
        for result in [&strict, &lenient] {
            match result {
                Ok(request) => assert_eq!(request.operation, operation),
                Err(error) => {
                    let _ = error.to_string();
                }
            }
        }
        if let Ok(strict) = &strict {
            match &lenient {
                // Compared as text: a `NaN` extension (multipart `strength=NaN`, refused later by the
                // core's range check) is not equal to itself.
                Ok(lenient) => {
                    assert_eq!(format!("{strict:?}"), format!("{lenient:?}"), "the modes disagree on an accepted body")
                }
                Err(e) => panic!("strict mode accepted a body the lenient mode refuses: {e}"),
            }
        }
    }
});
