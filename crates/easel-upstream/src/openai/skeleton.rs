//! Reading an images answer without serde_json reading its long base64 strings.
//!
//! A relayed gpt-image answer is about 1 MiB, nearly all of it one `b64_json` string. serde_json
//! reads a string byte by byte (looking for quotes, escapes and control characters, then checking
//! its UTF-8), which was the largest user-space cost of relaying it. The string has to be checked
//! as canonical base64 anyway ([`Base64::checked`], vectorised), and a string that passes needs
//! nothing else checked: base64 is printable ASCII without `"` or `\`.
//!
//! So [`Skeleton::of`] finds the strings with `memchr` (no escapes inside a string means no
//! backslash, so the closing quote is the next quote), checks each long one as base64 and keeps
//! those that pass aside (the "holes"); the answer with those strings emptied (a few hundred bytes)
//! is what serde_json parses, as strictly as ever: every byte outside the holes is parsed as
//! before, and a hole held valid JSON string content. An emptied string is recognised after the
//! parse by where it points (each hole leaves `""` at a known place in the skeleton), and the
//! caller uses a hole only where it expects a base64 image; a hole anywhere else, or a skeleton
//! that does not parse, sends the caller back to parsing the whole body, so a bad answer fails
//! exactly as it did, with the same message.

use std::ops::Range;

use bytes::Bytes;
use easel_core::backend::OutputImage;
use easel_core::base64::{Base64, ImageBytes};
use memchr::{memchr, memchr2};
use serde::Deserialize;

use crate::http::Failure;
use crate::media;

/// Strings shorter than this are left to serde_json: cutting them saves less than it costs.
const LONG: usize = 4096;

/// A JSON body with its long canonical base64 strings emptied.
#[derive(Debug, Default)]
pub struct Skeleton {
    /// The body without the holes' contents; empty when there are no holes.
    text: Vec<u8>,
    holes: Vec<Hole>,
}

#[derive(Debug)]
struct Hole {
    /// Where the emptied string's content starts in `text` (its closing quote).
    at: usize,
    /// The string's content in the body.
    span: Range<usize>,
    text: Base64,
}

impl Skeleton {
    /// Finds the long base64 strings of `body`. A body that is not JSON is no error here: the
    /// skeleton then fails to parse and the caller parses the body itself.
    pub fn of(body: &Bytes) -> Self {
        let mut out = Self::default();
        if body.len() < LONG {
            return out;
        }
        let (mut pos, mut copied) = (0, 0);
        while let Some(found) = memchr(b'"', &body[pos..]) {
            let open = pos + found;
            let Some((close, escapes)) = string_end(body, open + 1) else { break };
            pos = close + 1;
            let span = open + 1..close;
            if escapes || span.len() < LONG {
                continue;
            }
            let Ok(text) = Base64::checked(body.slice(span.clone())) else { continue };
            out.text.extend_from_slice(&body[copied..span.start]);
            out.holes.push(Hole { at: out.text.len(), span, text });
            copied = close;
        }
        if !out.holes.is_empty() {
            out.text.extend_from_slice(&body[copied..]);
        }
        out
    }

    /// `T` parsed from the skeleton when it parses and `holes_used` (how many of its holes are
    /// where `T` expects a base64 image, by [`Self::image`]) accounts for every hole; otherwise
    /// `T` parsed from the whole body, as serde_json alone would, errors included.
    pub fn read<'a, T: Deserialize<'a>>(
        &'a self,
        body: &'a [u8],
        holes_used: impl FnOnce(&T) -> usize,
    ) -> serde_json::Result<T> {
        if !self.holes.is_empty()
            && let Ok(parsed) = serde_json::from_slice(&self.text)
            && holes_used(&parsed) == self.holes.len()
        {
            return Ok(parsed);
        }
        serde_json::from_slice(body)
    }

    /// Whether a parsed string is one of the emptied ones.
    pub fn is_hole(&self, text: &str) -> bool {
        self.hole(text).is_some()
    }

    /// Whether a parsed string is empty in the body too.
    pub fn is_blank(&self, text: &str) -> bool {
        text.is_empty() && !self.is_hole(text)
    }

    /// The image a parsed base64 string holds: an emptied one was checked already; any other is
    /// a slice of `body` when it was borrowed from the skeleton or the body (shared, not copied)
    /// or a copy when it had escapes, and goes through [`media::from_b64`].
    pub fn image(&self, provider: &str, body: &Bytes, text: &str) -> Result<OutputImage, Failure> {
        match self.hole(text) {
            Some(base64) => media::output(provider, ImageBytes::Base64(base64.clone())),
            None => media::from_b64(provider, self.slice(body, text)),
        }
    }

    fn hole(&self, text: &str) -> Option<&Base64> {
        if !text.is_empty() {
            return None;
        }
        let at = (text.as_ptr() as usize).checked_sub(self.text.as_ptr() as usize)?;
        self.holes.binary_search_by_key(&at, |hole| hole.at).ok().map(|i| &self.holes[i].text)
    }

    /// A parsed string as bytes of `body`: mapped back when it lies in the skeleton, a slice when
    /// it lies in the body, a copy otherwise (a string with escapes, unescaped by serde_json).
    fn slice(&self, body: &Bytes, text: &str) -> Bytes {
        let within = |start: usize, len: usize| {
            let at = (text.as_ptr() as usize).checked_sub(start)?;
            (at + text.len() <= len).then_some(at)
        };
        if !self.holes.is_empty()
            && let Some(at) = within(self.text.as_ptr() as usize, self.text.len())
        {
            let removed: usize = self.holes.iter().take_while(|hole| hole.at < at).map(|hole| hole.span.len()).sum();
            return body.slice(at + removed..at + removed + text.len());
        }
        match within(body.as_ptr() as usize, body.len()) {
            Some(at) => body.slice(at..at + text.len()),
            None => Bytes::copy_from_slice(text.as_bytes()),
        }
    }
}

/// The closing quote of the string whose content starts at `from`, and whether it has escapes;
/// `None` when the body ends first.
fn string_end(body: &[u8], mut from: usize) -> Option<(usize, bool)> {
    let mut escapes = false;
    loop {
        let found = from + memchr2(b'"', b'\\', body.get(from..)?)?;
        if body[found] == b'"' {
            return Some((found, escapes));
        }
        escapes = true;
        from = found + 2;
    }
}

#[cfg(test)]
mod tests {
    use base64_simd::STANDARD;

    use super::*;
    use crate::openai::wire::ImagesResponse;

    /// The base64 of `n` bytes that sniff as a PNG.
    fn b64(n: usize, seed: u8) -> String {
        let mut data = b"\x89PNG\r\n\x1a\n".to_vec();
        data.extend((data.len()..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
        STANDARD.encode_to_string(data)
    }

    #[test]
    fn long_base64_strings_become_holes_and_everything_else_maps_back() {
        let (one, two) = (b64(6000, 1), b64(9000, 2));
        let body = Bytes::from(format!(
            r#"{{"data":[{{"b64_json":"{one}","revised_prompt":"a \"quoted\" otter"}},{{"b64_json":"","url":"https://x.test/a.png"}},{{"b64_json":"{two}"}}],"usage":{{"input_tokens":1,"output_tokens":2}}}}"#
        ));
        let skeleton = Skeleton::of(&body);
        assert_eq!(skeleton.holes.len(), 2);
        assert!(skeleton.text.len() < 300, "{}", String::from_utf8_lossy(&skeleton.text));
        let parsed: ImagesResponse<'_> = skeleton.read(&body, |_| 2).unwrap();
        let data = parsed.data.unwrap();
        let text = |item: usize| data[item].b64_json.as_ref().unwrap();
        for (item, expected) in [(0, &one), (2, &two)] {
            assert!(skeleton.is_hole(text(item)) && !skeleton.is_blank(text(item)));
            let Ok(OutputImage::Encoded { bytes: ImageBytes::Base64(image), .. }) =
                skeleton.image("p", &body, text(item))
            else {
                panic!("not an image: the test's bytes are no PNG")
            };
            assert_eq!(image.as_str(), expected);
            assert!(body.as_ptr_range().contains(&image.as_bytes().as_ptr()), "shared, not copied");
        }
        assert!(skeleton.is_blank(text(1)));
        assert_eq!(data[0].revised_prompt.as_deref(), Some(r#"a "quoted" otter"#));
        let url = data[1].url.as_deref().unwrap();
        let mapped = skeleton.slice(&body, url);
        assert_eq!(mapped, "https://x.test/a.png");
        assert!(body.as_ptr_range().contains(&mapped.as_ptr()), "a slice of the body");
        assert_eq!(skeleton.slice(&body, "not in either"), "not in either");
        assert_eq!(parsed.usage.unwrap().output_tokens, Some(2));
    }

    #[test]
    fn short_escaped_or_other_strings_are_left_alone() {
        for body in [
            format!(r#"{{"data":[{{"b64_json":"{}"}}]}}"#, b64(100, 0)),
            format!(r#"{{"data":[{{"b64_json":"{}\n{}"}}]}}"#, b64(3000, 0), b64(3000, 1)),
            format!(r#"{{"data":[{{"b64_json":"data:image/png;base64,{}"}}]}}"#, b64(6000, 0)),
            format!(r#"{{"data":[{{"b64_json":"{}"}}]}}"#, b64(6001, 0).trim_end_matches('=')),
            format!(r#"{{"data":[{{"b64_json":"{}"#, b64(6000, 0)),
        ] {
            assert_eq!(Skeleton::of(&Bytes::from(body.clone())).holes.len(), 0, "{}", &body[..40]);
        }
    }

    #[test]
    fn anything_but_holes_where_images_go_is_read_from_the_whole_body() {
        let image = b64(6000, 0);
        let used = |parsed: &ImagesResponse<'_>, skeleton: &Skeleton| {
            parsed
                .data
                .iter()
                .flatten()
                .filter(|item| item.b64_json.as_deref().is_some_and(|t| skeleton.is_hole(t)))
                .count()
        };
        // A hole in the prompt: the skeleton would read it as empty.
        let body = Bytes::from(format!(r#"{{"data":[{{"b64_json":"{image}","revised_prompt":"{image}"}}]}}"#));
        let skeleton = Skeleton::of(&body);
        assert_eq!(skeleton.holes.len(), 2);
        let parsed: ImagesResponse<'_> = skeleton.read(&body, |p| used(p, &skeleton)).unwrap();
        let data = parsed.data.unwrap();
        assert_eq!(data[0].revised_prompt.as_deref(), Some(image.as_str()));
        assert!(!skeleton.is_hole(data[0].b64_json.as_deref().unwrap()), "read from the body");
        // A body that is not JSON fails with serde_json's own message for it.
        let body = Bytes::from(format!(r#"{{"data":[{{"b64_json":"{image}"}}],}}"#));
        let skeleton = Skeleton::of(&body);
        assert_eq!(skeleton.holes.len(), 1);
        let error = skeleton.read::<ImagesResponse<'_>>(&body, |p| used(p, &skeleton)).unwrap_err();
        let plain = serde_json::from_slice::<ImagesResponse<'_>>(&body).unwrap_err();
        assert_eq!(error.to_string(), plain.to_string());
    }

    #[test]
    fn mutated_answers_read_as_serde_json_alone_reads_them() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let image = b64(5000, 3);
        let seed = format!(
            r#"{{"created":1,"data":[{{"b64_json":"{image}","revised_prompt":"r"}},{{"url":"https://x.test/{image}"}},{{"b64_json":"{image}"}}],"quality":"low","usage":{{"input_tokens":1,"output_tokens":2}}}}"#
        );
        let tokens: [&[u8]; 10] = [b"\"", b"\\", b",", b"}", b"]", b"{", b" ", b"\n", b"=", "é".as_bytes()];
        for round in 0..3000 {
            let mut body = seed.clone().into_bytes();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..body.len());
                match rng.random_range(0..3) {
                    0 => drop(body.splice(at..at, tokens[rng.random_range(0..tokens.len())].iter().copied())),
                    1 => drop(body.remove(at)),
                    _ => body.truncate(at),
                }
            }
            let body = Bytes::from(body);
            let skeleton = Skeleton::of(&body);
            let used = |parsed: &ImagesResponse<'_>| {
                parsed
                    .data
                    .iter()
                    .flatten()
                    .filter(|i| i.b64_json.as_deref().is_some_and(|t| skeleton.is_hole(t)))
                    .count()
            };
            let fast = skeleton.read::<ImagesResponse<'_>>(&body, used);
            let plain = serde_json::from_slice::<ImagesResponse<'_>>(&body);
            match (fast, plain) {
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "round {round}"),
                (Ok(a), Ok(b)) => {
                    // Each image's text (a hole's base64 in place of its emptied string), URL and prompt.
                    let texts = |r: &ImagesResponse<'_>| -> Vec<String> {
                        let items = r.data.iter().flatten();
                        items
                            .map(|i| {
                                let b64 = i.b64_json.as_deref().map(|t| skeleton.hole(t).map_or(t, Base64::as_str));
                                format!("{b64:?} {:?} {:?}", i.url, i.revised_prompt)
                            })
                            .collect()
                    };
                    assert_eq!(texts(&a), texts(&b), "round {round}");
                    assert_eq!(format!("{:?}{:?}", a.usage, a.quality), format!("{:?}{:?}", b.usage, b.quality));
                }
                (a, b) => panic!("round {round}: {:?} against {:?}", a.map(|_| ()), b.map(|_| ())),
            }
        }
    }
}
