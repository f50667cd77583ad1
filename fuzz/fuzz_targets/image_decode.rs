//! Decoding under small limits: `easel_core::imaging::decode_limited` (and `decode`) on arbitrary
//! bytes with a 256 × 256 pixel and 1 MiB budget, so a hostile header cannot make the fuzzer
//! allocate much.
//!
//! Beyond "no panic": what decodes has the header's dimensions and fits the limits.
#![no_main]

use easel_core::imaging::{DecodeLimits, decode, decode_limited, header};
use libfuzzer_sys::fuzz_target;

const LIMITS: DecodeLimits = DecodeLimits { max_pixels: 256 * 256, max_bytes: 1 << 20 };

/// `decode_limited` contains a panic inside the third-party decoder (it refuses the file: part
/// of its contract, tested in easel-core), so the process-aborting panic hook libfuzzer-sys
/// installs is replaced by the default one; a panic that escapes still aborts the run, through
/// libfuzzer-sys's own `catch_unwind` around each input.
static DEFAULT_HOOK: std::sync::Once = std::sync::Once::new();

fuzz_target!(|bytes: &[u8]| {
    DEFAULT_HOOK.call_once(|| drop(std::panic::take_hook()));
    let limited = decode_limited(bytes, LIMITS);
    if let Ok(image) = &limited {
        let h = header(bytes).expect("a decoded image has a header");
        assert_eq!(
            (image.width(), image.height()),
            (h.size.width, h.size.height),
            "decoded size differs from the header"
        );
        assert!(u64::from(image.width()) * u64::from(image.height()) <= LIMITS.max_pixels);
        assert!(image.as_bytes().len() as u64 <= LIMITS.max_bytes);
    }
    // `decode` is the same with the default byte budget; only run it where that stays small.
    if let Ok(h) = header(bytes)
        && h.decoded_bytes <= LIMITS.max_bytes
    {
        let plain = decode(bytes, LIMITS.max_pixels);
        if limited.is_ok() {
            assert!(plain.is_ok(), "decode refuses what decode_limited, with smaller limits, accepted");
        }
    }
});
