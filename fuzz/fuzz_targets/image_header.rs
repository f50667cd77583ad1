//! Image sniffing and header reading: `easel_types::sniff::sniff`, `easel_core::imaging::header`
//! and `probe`, on arbitrary bytes. No pixels are decoded here (see `image_decode`).
//!
//! Beyond "no panic": a header is only read from bytes that sniff, says the sniffed format, has
//! pixels, and agrees with `probe`.
#![no_main]

use easel_core::imaging::{header, probe, sniff};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let format = sniff(bytes);
    match header(bytes) {
        Ok(h) => {
            assert_eq!(Some(h.format), format, "the header's format is the sniffed one");
            assert!(h.size.width > 0 && h.size.height > 0);
            assert!(h.decoded_bytes >= h.size.pixels(), "at least a byte per pixel");
            assert_eq!(probe(bytes).ok(), Some((h.format, h.size)));
        }
        Err(e) => {
            let _ = e.to_string();
            assert!(probe(bytes).is_err());
        }
    }
});
