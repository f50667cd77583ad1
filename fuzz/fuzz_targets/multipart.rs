//! Multipart edits and variations: `easel_wire::request::parse_multipart` over parts built with
//! `arbitrary`. Names and values are mostly drawn from what clients send (the image part names
//! of seed 003, every parameter, valid and edge values, tiny real images, data URLs) so the
//! fuzzer spends its time past the first check; free-form names, values and bytes cover the rest.
//!
//! Beyond "no panic": an accepted form has one input image per image part, in order, and the
//! lenient mode accepts what the strict one does, with the same result.
#![no_main]

use arbitrary::Arbitrary;
use easel_types::request::ImageRef;
use easel_types::types::Operation;
use easel_wire::request::{FormPart, UnknownParams, is_image_name, parse_multipart};
use libfuzzer_sys::fuzz_target;

const NAMES: &[&str] = &[
    "image",
    "image[]",
    "image[0]",
    "image[1]",
    "image.0",
    "image.1.items",
    "mask",
    "mask[]",
    "prompt",
    "model",
    "n",
    "size",
    "quality",
    "response_format",
    "output_format",
    "output_compression",
    "background",
    "stream",
    "partial_images",
    "user",
    "input_fidelity",
    "moderation",
    "style",
    "seed",
    "steps",
    "guidance_scale",
    "strength",
    "negative_prompt",
    "images",
    "image[x]",
];
const VALUES: &[&str] = &[
    "",
    "1",
    "0",
    "-1",
    "10",
    "11",
    "512x512",
    "1024x1024",
    "auto",
    "768*512",
    "0x0",
    "url",
    "b64_json",
    "png",
    "jpeg",
    "webp",
    "true",
    "false",
    "transparent",
    "opaque",
    "high",
    "low",
    "100",
    "101",
    "0.5",
    "1e309",
    "NaN",
    "9999999999999999999999",
    "gpt-image-1",
    "dall-e-2",
    "a red rose",
    "null",
    "[]",
    "{}",
    "data:image/png;base64,iVBORw0KGgo=",
    "https://example.com/a.png",
    "http://[::1",
    "data:,",
    " ",
];
/// Smallest headers of each format (the seed images live in `fuzz/seeds/image_decode/`).
const IMAGES: &[&[u8]] = &[b"\x89PNG\r\n\x1a\n", &[0xFF, 0xD8, 0xFF, 0xE0], b"RIFF\0\0\0\0WEBPVP8 "];

#[derive(Arbitrary, Debug)]
enum Name {
    Known(u8),
    Free(String),
}

#[derive(Arbitrary, Debug)]
enum Data {
    Known(u8),
    Image(u8, Vec<u8>),
    Text(String),
    Bytes(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Part {
    name: Name,
    filename: Option<String>,
    content_type: Option<String>,
    data: Data,
}

#[derive(Arbitrary, Debug)]
struct Form {
    operation: u8,
    parts: Vec<Part>,
}

fn pick<T: Copy>(items: &[T], i: u8) -> T {
    items[usize::from(i) % items.len()]
}

fuzz_target!(|form: Form| {
    let operation = pick(Operation::ALL, form.operation);
    let parts: Vec<FormPart> = form
        .parts
        .into_iter()
        .map(|p| FormPart {
            name: match p.name {
                Name::Known(i) => pick(NAMES, i).to_string(),
                Name::Free(s) => s,
            },
            filename: p.filename,
            content_type: p.content_type,
            data: match p.data {
                Data::Known(i) => pick(VALUES, i).as_bytes().to_vec().into(),
                Data::Image(i, rest) => [pick(IMAGES, i), &rest].concat().into(),
                Data::Text(s) => s.into_bytes().into(),
                Data::Bytes(b) => b.into(),
            },
        })
        .collect();
    let image_parts: Vec<FormPart> = parts.iter().filter(|p| is_image_name(&p.name)).cloned().collect();

    let strict = parse_multipart(operation, parts.clone(), UnknownParams::Reject);
    let lenient = parse_multipart(operation, parts, UnknownParams::Ignore);
    if let Err(e) = &strict {
        let _ = e.to_string();
    }
    if let Ok(request) = &lenient {
        assert_eq!(request.operation, operation);
        assert_eq!(request.images.len(), image_parts.len(), "one input image per image part");
        for (image, part) in request.images.iter().zip(&image_parts) {
            if easel_types::sniff::sniff(&part.data).is_some() || part.filename.is_some() {
                assert!(
                    matches!(&image.source, ImageRef::Inline(b) if *b == part.data),
                    "a file part's bytes are kept as sent"
                );
            }
        }
    }
    if let Ok(strict) = &strict {
        match &lenient {
            // Compared as text: a `NaN` extension (multipart `strength=NaN`, refused later by the
            // core's range check) is not equal to itself.
            Ok(lenient) => {
                assert_eq!(format!("{strict:?}"), format!("{lenient:?}"), "the modes disagree on an accepted form")
            }
            Err(e) => panic!("strict mode accepted a form the lenient mode refuses: {e}"),
        }
    }
});
