//! The bad-input matrix (issue 9, "Prove the whole surface"): every dialect and route with wrong
//! types, out-of-range and missing values, duplicated fields, broken and hostile images, bad
//! bodies, content types, boundaries and auth headers. Cases are generated from tables; each one
//! asserts the status, OpenAI's envelope (exactly four keys, JSON content type), the `param` and
//! the code (or one of a few codes where two are right). No case may answer 5xx, and the server
//! must serve a valid request after all of them. Failures are collected and reported together.

use std::time::Duration;

use base64::Engine as _;
use easel_core::testing::{png_chunk, png_crc};
use easel_server::storage::keys::KeySettings;
use image::{DynamicImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{TestApp, encode, json_body, mask, png, spawn_app_with, test_models};

/// The body limit of the matrix's server: small, so a body over it is cheap to send.
const MAX_BODY: usize = 256 * 1024;

// ---------------------------------------------------------------------------------------------
// Requests and expectations.

#[derive(Clone)]
struct Req {
    method: Method,
    path: String,
    content_type: Option<String>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    /// Send no `Authorization` header at all.
    no_auth: bool,
}

impl Req {
    fn new(method: Method, path: &str) -> Self {
        Self {
            method,
            path: path.to_string(),
            content_type: None,
            headers: Vec::new(),
            body: Vec::new(),
            no_auth: false,
        }
    }

    fn get(path: &str) -> Self {
        Self::new(Method::GET, path)
    }

    fn json(path: &str, body: &Value) -> Self {
        Self::raw(path, Some("application/json"), serde_json::to_vec(body).unwrap())
    }

    fn raw(path: &str, content_type: Option<&str>, body: Vec<u8>) -> Self {
        Self { content_type: content_type.map(str::to_string), body, ..Self::new(Method::POST, path) }
    }

    fn form(path: &str, parts: &[P]) -> Self {
        let (content_type, body) = multipart(parts, BOUNDARY);
        Self::raw(path, Some(&content_type), body)
    }

    fn method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }

    fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}

/// One multipart part: a text part (no file name) or a file part.
#[derive(Clone)]
enum P {
    Text(String, Vec<u8>),
    File(String, Vec<u8>),
}

fn t(name: &str, value: impl Into<Vec<u8>>) -> P {
    P::Text(name.to_string(), value.into())
}

fn f(name: &str, bytes: Vec<u8>) -> P {
    P::File(name.to_string(), bytes)
}

const BOUNDARY: &str = "easel-matrix-7f3a";

fn multipart(parts: &[P], boundary: &str) -> (String, Vec<u8>) {
    let mut body = Vec::new();
    for part in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        let data = match part {
            P::Text(name, data) => {
                body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes());
                data
            }
            P::File(name, data) => {
                body.extend_from_slice(
                    format!(
                        "Content-Disposition: form-data; name=\"{name}\"; filename=\"f.bin\"\r\n\
                         Content-Type: application/octet-stream\r\n\r\n"
                    )
                    .as_bytes(),
                );
                data
            }
        };
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[derive(Clone, Debug)]
enum Expect {
    /// A 2xx JSON answer with this status.
    Ok(u16),
    /// A 200 that is not JSON (`/metrics`).
    Text,
    /// OpenAI's envelope with this status and param, and one of these codes; the message names
    /// `named` where the param cannot (an unusable image: OpenAI sends `param: null`).
    Err { status: u16, param: Option<String>, codes: Vec<&'static str>, named: Option<String> },
}

fn ok() -> Expect {
    Expect::Ok(200)
}

fn err(status: u16, param: Option<&str>, code: &'static str) -> Expect {
    Expect::Err { status, param: param.map(str::to_string), codes: vec![code], named: None }
}

/// A 400 naming `param`.
fn bad(param: &str, code: &'static str) -> Expect {
    err(400, Some(param), code)
}

/// An image that cannot be used: `invalid_image_file` with `param: null`, as OpenAI sends it,
/// and a message that names the image (`image[1]`, `mask`).
fn bad_image(param: &str) -> Expect {
    Expect::Err { status: 400, param: None, codes: vec!["invalid_image_file"], named: Some(param.to_string()) }
}

/// Where two codes are right.
fn either(status: u16, param: Option<&str>, codes: &[&'static str]) -> Expect {
    Expect::Err { status, param: param.map(str::to_string), codes: codes.to_vec(), named: None }
}

struct Case {
    name: String,
    req: Req,
    expect: Expect,
}

#[derive(Default)]
struct Matrix {
    cases: Vec<Case>,
}

impl Matrix {
    fn add(&mut self, name: impl Into<String>, req: Req, expect: Expect) {
        self.cases.push(Case { name: name.into(), req, expect });
    }

    /// Runs every case against `app`, then a valid request; panics with every failure.
    async fn run(self, app: &TestApp, auth: Option<&str>) -> usize {
        let count = self.cases.len();
        let mut failures = Vec::new();
        for case in self.cases {
            if let Err(problem) = check(app, &case, auth).await {
                failures.push(format!("[{}] {problem}", case.name));
            }
        }
        // Alive after all of them.
        let mut alive = app
            .client
            .post(app.url("/v1/images/generations"))
            .json(&json!({"model": "test-image", "prompt": "still alive"}));
        if let Some(key) = auth {
            alive = alive.bearer_auth(key);
        }
        let response = alive.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        if status != 200 || !text.contains("b64_json") {
            failures.push(format!("[alive at the end] {status}: {text}"));
        }
        assert!(failures.is_empty(), "{} of {count} cases failed:\n{}", failures.len(), failures.join("\n"));
        count
    }
}

async fn send(app: &TestApp, req: &Req, auth: Option<&str>) -> reqwest::Response {
    let mut builder = app.client.request(req.method.clone(), app.url(&req.path));
    if let Some(content_type) = &req.content_type {
        builder = builder.header("content-type", content_type.as_str());
    }
    let mut has_auth = false;
    for (name, value) in &req.headers {
        has_auth |= name.eq_ignore_ascii_case("authorization");
        builder = builder.header(name.as_str(), reqwest::header::HeaderValue::from_bytes(value).unwrap());
    }
    if let (Some(key), false) = (auth, has_auth || req.no_auth) {
        builder = builder.bearer_auth(key);
    }
    if !req.body.is_empty() || req.method == Method::POST {
        builder = builder.body(req.body.clone());
    }
    builder.send().await.unwrap()
}

async fn check(app: &TestApp, case: &Case, auth: Option<&str>) -> Result<(), String> {
    let response = send(app, &case.req, auth).await;
    let status = response.status().as_u16();
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_string);
    let text = response.text().await.map_err(|e| format!("reading the body: {e}"))?;
    let short: String = text.chars().take(300).collect();
    if status >= 500 {
        return Err(format!("a {status}: {short}"));
    }
    if matches!(case.expect, Expect::Text) {
        return if status == 200 { Ok(()) } else { Err(format!("expected 200, got {status}: {short}")) };
    }
    if content_type.as_deref() != Some("application/json") {
        return Err(format!("status {status}, content type {content_type:?}, not JSON: {short}"));
    }
    let body: Value = serde_json::from_str(&text).map_err(|e| format!("status {status}, not JSON ({e}): {short}"))?;
    match &case.expect {
        Expect::Text => {}
        Expect::Ok(want) => {
            if status != *want {
                return Err(format!("expected {want}, got {status}: {short}"));
            }
        }
        Expect::Err { status: want, param, codes, named } => {
            if status != *want {
                return Err(format!("expected {want} {codes:?} param {param:?}, got {status}: {short}"));
            }
            let envelope = body.as_object().filter(|o| o.len() == 1).and_then(|o| o.get("error"));
            let Some(error) = envelope.and_then(Value::as_object) else {
                return Err(format!("not OpenAI's envelope: {short}"));
            };
            let shaped = error.len() == 4
                && error.get("message").and_then(Value::as_str).is_some_and(|m| !m.is_empty())
                && error.get("type").is_some_and(Value::is_string)
                && error.get("param").is_some_and(|p| p.is_string() || p.is_null())
                && error.get("code").is_some_and(|c| c.is_string() || c.is_null());
            if !shaped {
                return Err(format!("the envelope is not message/type/param/code: {short}"));
            }
            let code = error["code"].as_str().unwrap_or("null");
            if !codes.contains(&code) {
                return Err(format!("expected code {codes:?}, got '{code}': {short}"));
            }
            if error["param"].as_str() != param.as_deref() {
                return Err(format!("expected param {param:?}, got {}: {short}", error["param"]));
            }
            if let Some(named) = named.as_deref().filter(|n| !error["message"].as_str().unwrap_or("").contains(n)) {
                return Err(format!("expected a message naming '{named}': {short}"));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Image bytes: valid in unusual encodings, broken, and hostile.

/// zlib with stored (uncompressed) deflate blocks.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = if data.is_empty() { vec![&[][..]] } else { data.chunks(65_535).collect() };
    for (i, block) in blocks.iter().enumerate() {
        out.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

/// A PNG written by hand: `rows` are the raw scanlines (filter byte included).
fn png_raw(width: u32, height: u32, depth: u8, color: u8, extra: &[(&[u8; 4], Vec<u8>)], rows: &[u8]) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[depth, color, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    for (kind, data) in extra {
        png_chunk(&mut out, kind, data);
    }
    png_chunk(&mut out, b"IDAT", &zlib_stored(rows));
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// `height` scanlines of `bytes_per_row` bytes, filter 0, varied content.
fn rows(height: u32, bytes_per_row: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for y in 0..height {
        out.push(0);
        out.extend((0..bytes_per_row).map(|x| (x as u32 * 7 + y * 13) as u8));
    }
    out
}

fn png16_rgb(w: u32, h: u32) -> Vec<u8> {
    png_raw(w, h, 16, 2, &[], &rows(h, w as usize * 6))
}

fn png16_rgba(w: u32, h: u32) -> Vec<u8> {
    png_raw(w, h, 16, 6, &[], &rows(h, w as usize * 8))
}

fn png_palette(w: u32, h: u32, transparent: bool) -> Vec<u8> {
    let plte = (b"PLTE", vec![255, 0, 0, 0, 0, 255]);
    let mut extra = vec![plte];
    if transparent {
        extra.push((b"tRNS", vec![0, 255]));
    }
    let mut data = Vec::new();
    for y in 0..h {
        data.push(0);
        data.extend((0..w).map(|x| u8::from(x < w / 2 || y == 0)));
    }
    png_raw(w, h, 8, 3, &extra, &data)
}

fn png_gray1(w: u32, h: u32) -> Vec<u8> {
    png_raw(w, h, 1, 0, &[], &rows(h, (w as usize).div_ceil(8)))
}

fn png_gray_alpha(w: u32, h: u32) -> Vec<u8> {
    png_raw(w, h, 8, 4, &[], &rows(h, w as usize * 2))
}

fn png_interlaced(w: u32, h: u32) -> Vec<u8> {
    // Adam7 with 8-bit gray: passes of (w/8 × h/8), ... written as one IDAT; easier to let the
    // encoder do the filtering, so a non-interlaced image with the interlace flag is a corrupt one.
    let mut bytes = png_raw(w, h, 8, 0, &[], &rows(h, w as usize));
    bytes[28] = 1; // the interlace byte of IHDR
    let crc = png_crc(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

/// A PNG that is only a header declaring `w` × `h` RGBA (16-bit when `deep`).
fn png_header_only(w: u32, h: u32, deep: bool) -> Vec<u8> {
    easel_core::testing::png_header_only(w, h, if deep { 16 } else { 8 }, 6)
}

fn noisy(w: u32, h: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| Rgb([(x * 37 + y) as u8, (y * 11) as u8, (x ^ y) as u8])))
}

fn jpeg(w: u32, h: u32) -> Vec<u8> {
    encode(&noisy(w, h), ImageFormat::Jpeg)
}

fn webp(w: u32, h: u32) -> Vec<u8> {
    encode(&noisy(w, h), ImageFormat::WebP)
}

fn webp_alpha(w: u32, h: u32) -> Vec<u8> {
    let rgba = RgbaImage::from_fn(w, h, |x, _| Rgba([9, 9, 9, if x < w / 2 { 255 } else { 0 }]));
    encode(&DynamicImage::ImageRgba8(rgba), ImageFormat::WebP)
}

/// A JPEG whose frame header declares 65535 × 65535.
fn jpeg_huge() -> Vec<u8> {
    let mut bytes = jpeg(16, 16);
    let sof = bytes.windows(2).position(|w| w[0] == 0xFF && (w[1] == 0xC0 || w[1] == 0xC2)).unwrap();
    bytes[sof + 5..sof + 9].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
    bytes
}

/// A WebP `VP8X` header declaring a 16384 × 16384 canvas, and nothing else.
fn webp_huge() -> Vec<u8> {
    let mut vp8x = vec![0u8; 10];
    let side = 16_384u32 - 1;
    vp8x[4..7].copy_from_slice(&side.to_le_bytes()[..3]);
    vp8x[7..10].copy_from_slice(&side.to_le_bytes()[..3]);
    let mut body = b"WEBPVP8X".to_vec();
    body.extend_from_slice(&10u32.to_le_bytes());
    body.extend_from_slice(&vp8x);
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn half(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes.truncate(bytes.len() / 2);
    bytes
}

fn flip(mut bytes: Vec<u8>, at: usize) -> Vec<u8> {
    bytes[at] ^= 0xFF;
    bytes
}

/// Inputs that can never be decoded (or must be refused from their header), by name.
fn broken_images() -> Vec<(&'static str, Vec<u8>)> {
    let valid = png(16, 16, [1, 2, 3]);
    vec![
        ("text", b"this is not an image".to_vec()),
        ("empty", Vec::new()),
        ("gif", b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;".to_vec()),
        ("svg", br#"<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect width="8" height="8"/></svg>"#.to_vec()),
        ("bmp", [b"BM".as_slice(), &[0x46, 0, 0, 0, 0, 0, 0, 0, 0x36, 0, 0, 0, 0x28, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 24, 0], &[0; 28]].concat()),
        ("tiff", [b"II*\0".as_slice(), &[8, 0, 0, 0], &[0; 32]].concat()),
        ("avif", [&[0u8, 0, 0, 0x1c][..], b"ftypavif", &[0, 0, 0, 0], b"avifmif1miaf", &[0; 16]].concat()),
        ("png signature only", valid[..8].to_vec()),
        ("png cut in IHDR", valid[..20].to_vec()),
        ("png IHDR crc", flip(valid.clone(), 30)),
        ("png 0x0", png_header_only(0, 0, false)),
        ("png 100000x100000 in a few bytes", png_header_only(100_000, 100_000, false)),
        ("png 8192x8192 16-bit in a few bytes", png_header_only(8192, 8192, true)),
        ("png bad depth", png_raw(8, 8, 3, 2, &[], &rows(8, 24))),
        ("jpeg SOI only", vec![0xFF, 0xD8, 0xFF]),
        ("jpeg 65535x65535", jpeg_huge()),
        ("webp RIFF header only", b"RIFF\x04\0\0\0WEBP".to_vec()),
        ("webp 16384x16384 canvas", webp_huge()),
        ("webp cut in its header", webp(16, 16)[..20].to_vec()),
    ]
}

/// Valid images in the less common encodings: they must be accepted.
fn odd_valid_images() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("png 16-bit rgb", png16_rgb(16, 16)),
        ("png 16-bit rgba", png16_rgba(16, 16)),
        ("png palette", png_palette(16, 16, false)),
        ("png palette tRNS", png_palette(16, 16, true)),
        ("png 1-bit gray", png_gray1(16, 16)),
        ("png gray alpha", png_gray_alpha(16, 16)),
        ("jpeg", jpeg(16, 16)),
        ("webp lossless", webp(16, 16)),
        ("webp alpha", webp_alpha(16, 16)),
    ]
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn data_url(media: &str, bytes: &[u8]) -> String {
    format!("data:{media};base64,{}", b64(bytes))
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

// ---------------------------------------------------------------------------------------------
// The matrix.

const GEN: &str = "/v1/images/generations";
const EDIT: &str = "/v1/images/edits";
const VAR: &str = "/v1/images/variations";

fn with(base: &Value, key: &str, value: Value) -> Value {
    let mut body = base.clone();
    body[key] = value;
    body
}

fn generations(m: &mut Matrix) {
    let base = json!({"model": "test-image", "prompt": "a lighthouse"});
    m.add("gen valid", Req::json(GEN, &base), ok());

    // Wrong types for every parameter.
    let params = [
        "prompt",
        "model",
        "n",
        "size",
        "quality",
        "style",
        "background",
        "output_format",
        "output_compression",
        "moderation",
        "response_format",
        "stream",
        "partial_images",
        "user",
        "negative_prompt",
        "seed",
        "steps",
        "guidance_scale",
    ];
    for param in params {
        let mut wrong = vec![json!([1]), json!({"a": 1})];
        if param != "stream" {
            wrong.push(json!(true));
        }
        if !["guidance_scale"].contains(&param) {
            wrong.push(json!(1.5));
        }
        for value in wrong {
            m.add(
                format!("gen {param}={value}"),
                Req::json(GEN, &with(&base, param, value)),
                bad(param, "invalid_type"),
            );
        }
    }
    // Strings that are not numbers or booleans where those belong.
    for param in ["n", "output_compression", "partial_images", "seed", "steps", "guidance_scale", "stream"] {
        m.add(
            format!("gen {param}=\"lots\""),
            Req::json(GEN, &with(&base, param, json!("lots"))),
            bad(param, "invalid_type"),
        );
    }
    // Values outside a closed set.
    for param in ["quality", "style", "background", "output_format", "moderation", "response_format"] {
        m.add(
            format!("gen {param}=bogus"),
            Req::json(GEN, &with(&base, param, json!("bogus"))),
            bad(param, "invalid_value"),
        );
    }

    // Out of range.
    let ranges: Vec<(&str, Value, &'static str)> = vec![
        ("n", json!(0), "integer_below_min_value"),
        ("n", json!(-1), "integer_below_min_value"),
        ("n", json!(11), "integer_above_max_value"),
        ("n", json!("0"), "integer_below_min_value"),
        ("n", json!(i64::MAX), "integer_above_max_value"),
        ("output_compression", json!(-1), "integer_below_min_value"),
        ("output_compression", json!(101), "integer_above_max_value"),
        ("output_compression", json!(100_000), "integer_above_max_value"),
        ("partial_images", json!(-1), "integer_below_min_value"),
        ("partial_images", json!(4), "integer_above_max_value"),
        ("steps", json!(0), "integer_below_min_value"),
        ("steps", json!(501), "integer_above_max_value"),
        ("guidance_scale", json!(-0.5), "invalid_value"),
        ("guidance_scale", json!(50.5), "invalid_value"),
        ("guidance_scale", json!(1e30), "invalid_value"),
    ];
    for (param, value, code) in ranges {
        m.add(format!("gen {param}={value}"), Req::json(GEN, &with(&base, param, value)), bad(param, code));
    }
    for size in [
        "0x0",
        "7x8",
        "1001x1001",
        "4096x4096",
        "8x2048",
        "-8x8",
        "abc",
        "1024",
        "1024x",
        "x1024",
        "99999999999x8",
        "1024x1024x3",
        " ",
    ] {
        let expect = if size.trim().is_empty() { ok() } else { bad("size", "invalid_value") };
        m.add(format!("gen size={size:?}"), Req::json(GEN, &with(&base, "size", json!(size))), expect);
    }
    for size in ["auto", "64x64", "AUTO"] {
        m.add(format!("gen size={size}"), Req::json(GEN, &with(&base, "size", json!(size))), ok());
    }
    // Model-dependent values.
    let dalle = json!({"model": "test-dalle", "prompt": "p"});
    m.add("gen dalle n=2", Req::json(GEN, &with(&dalle, "n", json!(2))), bad("n", "integer_above_max_value"));
    m.add(
        "gen dalle quality=low",
        Req::json(GEN, &with(&dalle, "quality", json!("low"))),
        bad("quality", "invalid_value"),
    );
    m.add(
        "gen dalle long prompt",
        Req::json(GEN, &with(&dalle, "prompt", json!("p".repeat(41)))),
        bad("prompt", "invalid_value"),
    );
    m.add(
        "gen dalle 1024x1024",
        Req::json(GEN, &with(&dalle, "size", json!("1024x1024"))),
        bad("size", "invalid_value"),
    );
    m.add(
        "gen fixed transparent",
        Req::json(GEN, &json!({"model": "test-fixed", "prompt": "p", "background": "transparent"})),
        bad("background", "invalid_value"),
    );
    m.add(
        "gen transparent jpeg",
        Req::json(
            GEN,
            &json!({"model": "test-image", "prompt": "p", "background": "transparent", "output_format": "jpeg"}),
        ),
        bad("output_format", "invalid_value"),
    );

    // Missing and empty.
    m.add(
        "gen no prompt",
        Req::json(GEN, &json!({"model": "test-image"})),
        bad("prompt", "missing_required_parameter"),
    );
    m.add(
        "gen empty prompt",
        Req::json(GEN, &with(&base, "prompt", json!(""))),
        bad("prompt", "missing_required_parameter"),
    );
    m.add(
        "gen blank prompt",
        Req::json(GEN, &with(&base, "prompt", json!(" \n\t"))),
        bad("prompt", "missing_required_parameter"),
    );
    m.add(
        "gen null prompt",
        Req::json(GEN, &with(&base, "prompt", Value::Null)),
        bad("prompt", "missing_required_parameter"),
    );
    m.add("gen no model (the default)", Req::json(GEN, &json!({"prompt": "p"})), ok());
    m.add(
        "gen unknown model",
        Req::json(GEN, &with(&base, "model", json!("nope"))),
        err(404, Some("model"), "model_not_found"),
    );
    m.add("gen empty object", Req::json(GEN, &json!({})), bad("prompt", "missing_required_parameter"));

    // Parameters of other operations, and unknown ones.
    for param in ["foo", "images", "image", "mask", "strength", "input_fidelity", "parameters"] {
        // `parameters` without `input` is not the Qwen shape: an unknown parameter too.
        let value = if param == "parameters" { json!({}) } else { json!("x") };
        m.add(
            format!("gen unknown {param}"),
            Req::json(GEN, &with(&base, param, value)),
            bad(param, "unknown_parameter"),
        );
    }
    m.add(
        "gen image data url",
        Req::json(GEN, &with(&base, "image", json!(crate::helpers::data_url(&png(8, 8, [1, 1, 1]))))),
        bad("image", "unknown_parameter"),
    );

    // Bodies that are not JSON objects.
    let raws: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", b"{\"prompt\": ".to_vec()),
        ("array", b"[1, 2]".to_vec()),
        ("string", b"\"a lighthouse\"".to_vec()),
        ("number", b"42".to_vec()),
        ("null", b"null".to_vec()),
        ("empty", Vec::new()),
        ("not utf-8", b"{\"prompt\": \"\xff\xfe\"}".to_vec()),
        ("trailing garbage", b"{\"prompt\": \"p\"} x".to_vec()),
        ("10000 nested arrays", nested(10_000).into_bytes()),
        ("10000 nested arrays in a field", format!("{{\"prompt\": {}}}", nested(10_000)).into_bytes()),
        ("10000 nested objects", format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000)).into_bytes()),
        ("a form body", b"prompt=p&model=test-image".to_vec()),
    ];
    for (name, body) in raws {
        m.add(
            format!("gen body {name}"),
            Req::raw(GEN, Some("application/json"), body),
            err(400, None, "invalid_json"),
        );
    }
    // Content types.
    let body = serde_json::to_vec(&base).unwrap();
    m.add("gen no content type", Req::raw(GEN, None, body.clone()), ok());
    m.add("gen json charset", Req::raw(GEN, Some("application/json; charset=utf-8"), body.clone()), ok());
    m.add("gen +json", Req::raw(GEN, Some("application/vnd.easel+json"), body.clone()), ok());
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "image/png",
        "application/xml",
        "*/*",
    ] {
        m.add(
            format!("gen content type {content_type}"),
            Req::raw(GEN, Some(content_type), body.clone()),
            err(415, None, "unsupported_media_type"),
        );
    }
    // Over the body limit.
    m.add(
        "gen body over the limit",
        Req::json(GEN, &with(&base, "prompt", json!("p".repeat(MAX_BODY + 1)))),
        err(413, None, "request_too_large"),
    );
    // Methods.
    m.add("gen GET", Req::get(GEN), err(405, None, "method_not_allowed"));
    m.add("gen PUT", Req::json(GEN, &base).method(Method::PUT), err(405, None, "method_not_allowed"));
}

fn qwen(m: &mut Matrix) {
    let msg =
        |content: Value| json!({"model": "test-image", "input": {"messages": [{"role": "user", "content": content}]}});
    let with_params = |params: Value| {
        let mut body = msg(json!("a lake"));
        body["parameters"] = params;
        body
    };
    m.add("qwen string content", Req::json(GEN, &msg(json!("a lake"))), ok());
    m.add("qwen part content", Req::json(GEN, &msg(json!([{"text": "a lake"}]))), ok());
    m.add("qwen parameters", Req::json(GEN, &with_params(json!({"size": "64*32", "n": 2, "seed": 3}))), ok());

    for (name, input) in [("string", json!("a lake")), ("array", json!([])), ("number", json!(1))] {
        m.add(
            format!("qwen input {name}"),
            Req::json(GEN, &json!({"model": "test-image", "input": input})),
            bad("input", "invalid_value"),
        );
    }
    m.add(
        "qwen no messages",
        Req::json(GEN, &json!({"model": "test-image", "input": {}})),
        bad("prompt", "missing_required_parameter"),
    );
    m.add(
        "qwen messages object",
        Req::json(GEN, &json!({"model": "test-image", "input": {"messages": {}}})),
        bad("input.messages", "invalid_type"),
    );
    m.add(
        "qwen message no content",
        Req::json(GEN, &json!({"model": "test-image", "input": {"messages": [{"role": "user"}]}})),
        bad("input.messages[0].content", "missing_required_parameter"),
    );
    m.add(
        "qwen message string",
        Req::json(GEN, &json!({"model": "test-image", "input": {"messages": ["hi"]}})),
        bad("input.messages[0]", "invalid_type"),
    );
    for (name, content) in [
        ("number", json!(3)),
        ("object", json!({"text": "x"})),
        ("part unknown key", json!([{"txt": "x"}])),
        ("part text number", json!([{"text": 3}])),
    ] {
        m.add(
            format!("qwen content {name}"),
            Req::json(GEN, &msg(content)),
            bad("input.messages[0].content", "invalid_type"),
        );
    }
    m.add("qwen empty content", Req::json(GEN, &msg(json!(""))), bad("prompt", "missing_required_parameter"));
    m.add("qwen empty parts", Req::json(GEN, &msg(json!([]))), bad("prompt", "missing_required_parameter"));
    m.add(
        "qwen unknown input key",
        Req::json(GEN, &json!({"model": "test-image", "input": {"messages": [], "foo": 1}})),
        bad("input.foo", "unknown_parameter"),
    );
    m.add(
        "qwen role number",
        Req::json(GEN, &json!({"model": "test-image", "input": {"messages": [{"role": 1, "content": "x"}]}})),
        bad("input.messages[0].role", "invalid_type"),
    );
    m.add(
        "qwen image part in a generation",
        Req::json(GEN, &msg(json!([{"image": crate::helpers::data_url(&png(8, 8, [1, 1, 1]))}, {"text": "x"}]))),
        bad("input.messages[0].content[0].image", "unknown_parameter"),
    );

    // `parameters`.
    for (name, params) in [("string", json!("n=2")), ("array", json!([1]))] {
        m.add(
            format!("qwen parameters {name}"),
            Req::json(GEN, &with_params(params)),
            bad("parameters", "invalid_value"),
        );
    }
    for param in ["size", "n", "seed", "negative_prompt", "steps", "guidance_scale"] {
        m.add(
            format!("qwen parameters.{param}=[1]"),
            Req::json(GEN, &with_params(json!({param: [1]}))),
            bad(&format!("parameters.{param}"), "invalid_type"),
        );
    }
    m.add(
        "qwen parameters.foo",
        Req::json(GEN, &with_params(json!({"foo": 1}))),
        bad("parameters.foo", "unknown_parameter"),
    );
    m.add(
        "qwen parameters.size bogus",
        Req::json(GEN, &with_params(json!({"size": "big"}))),
        bad("parameters.size", "invalid_value"),
    );
    // Model-dependent ranges are checked by the core, which names a value as the client wrote it.
    m.add(
        "qwen parameters.n=0",
        Req::json(GEN, &with_params(json!({"n": 0}))),
        bad("parameters.n", "integer_below_min_value"),
    );
    m.add(
        "qwen parameters.n=11",
        Req::json(GEN, &with_params(json!({"n": 11}))),
        bad("parameters.n", "integer_above_max_value"),
    );
    m.add(
        "qwen parameters.steps=0",
        Req::json(GEN, &with_params(json!({"steps": 0}))),
        bad("parameters.steps", "integer_below_min_value"),
    );
    m.add(
        "qwen parameters.size 4096*4096",
        Req::json(GEN, &with_params(json!({"size": "4096*4096"}))),
        bad("parameters.size", "invalid_value"),
    );
    let mut both = with_params(json!({"n": "x"}));
    both["n"] = json!(1);
    m.add("qwen top-level n wins over a bad parameters.n", Req::json(GEN, &both), ok());
    m.add(
        "qwen unknown top-level",
        Req::json(GEN, &with(&msg(json!("x")), "foo", json!(1))),
        bad("foo", "unknown_parameter"),
    );

    // Edits in the Qwen shape.
    let edit = |content: Value| Req::json(EDIT, &msg(content));
    let good = crate::helpers::data_url(&png(8, 8, [1, 1, 1]));
    m.add("qwen edit parts", edit(json!([{"image": good}, {"text": "blue"}])), ok());
    m.add("qwen edit inline", edit(json!(format!("make {good} blue"))), ok());
    m.add("qwen edit no image", edit(json!("blue")), bad("image", "missing_required_parameter"));
    m.add(
        "qwen edit image number",
        edit(json!([{"image": 5}, {"text": "x"}])),
        bad("input.messages[0].content", "invalid_type"),
    );
    m.add(
        "qwen edit bad base64",
        edit(json!([{"image": "data:image/png;base64,@@@"}, {"text": "x"}])),
        bad("input.messages[0].content[0].image", "invalid_image_url"),
    );
    m.add(
        "qwen edit gif",
        edit(json!([{"image": data_url("image/gif", b"GIF89a....")}, {"text": "x"}])),
        bad_image("input.messages[0].content[0].image"),
    );
    m.add(
        "qwen edit inline gif",
        edit(json!(format!("x {}", data_url("image/gif", b"GIF89a....")))),
        bad_image("input.messages[0].content"),
    );
    m.add(
        "qwen edit image_url part",
        edit(json!([{"type": "image_url", "image_url": {"url": "data:,"}}, {"text": "x"}])),
        bad("input.messages[0].content[0].image_url", "invalid_image_url"),
    );
    m.add(
        "qwen edit file url not allowed",
        edit(json!([{"image": "https://example.com/a.png"}, {"text": "x"}])),
        bad("input.messages[0].content[0].image", "invalid_image_url"),
    );
    m.add(
        "qwen edit input.images not list",
        Req::json(EDIT, &json!({"model": "test-image", "input": {"messages": [{"content": "x"}], "images": "a"}})),
        bad("input.images", "invalid_type"),
    );
    m.add(
        "qwen edit input.images bad",
        Req::json(EDIT, &json!({"model": "test-image", "input": {"messages": [{"content": "x"}], "images": ["nope"]}})),
        bad("input.images[0]", "invalid_image_url"),
    );
    m.add(
        "qwen edit mask_image_url wrong size",
        Req::json(EDIT, &json!({"model": "test-image", "input": {"messages": [{"content": "x"}], "images": [good], "mask_image_url": crate::helpers::data_url(&mask(4, 4, |_, _| 0))}})),
        bad("input.mask_image_url", "invalid_value"),
    );
}

fn json_edits(m: &mut Matrix) {
    let good = crate::helpers::data_url(&png(16, 16, [1, 2, 3]));
    let body = |images: Value| json!({"model": "test-image", "prompt": "p", "images": images});
    let edit = |images: Value| Req::json(EDIT, &body(images));
    m.add("jedit valid", edit(json!([{"image_url": good}])), ok());
    m.add("jedit url object", edit(json!([{"image_url": {"url": good}}])), ok());
    m.add("jedit images string", edit(json!(good)), bad("images", "invalid_type"));
    m.add("jedit images object", edit(json!({"image_url": good})), bad("images", "invalid_type"));
    m.add("jedit images[0] string", edit(json!([good])), bad("images[0]", "invalid_type"));
    m.add("jedit images[0] empty", edit(json!([{}])), bad("images[0].image_url", "missing_required_parameter"));
    m.add(
        "jedit images[0] both",
        edit(json!([{"image_url": good, "file_id": "file-1"}])),
        bad("images[0]", "invalid_value"),
    );
    m.add(
        "jedit images[0] unknown",
        edit(json!([{"image_url": good, "detail": "high"}])),
        bad("images[0].detail", "unknown_parameter"),
    );
    m.add("jedit image_url number", edit(json!([{"image_url": 5}])), bad("images[0].image_url", "invalid_type"));
    m.add(
        "jedit image_url.url number",
        edit(json!([{"image_url": {"url": 5}}])),
        bad("images[0].image_url", "invalid_type"),
    );
    m.add("jedit file_id", edit(json!([{"file_id": "file-1"}])), bad("images[0].file_id", "unsupported_file_id"));
    m.add("jedit no images", edit(json!([])), bad("image", "missing_required_parameter"));
    m.add("jedit 17 images", edit(json!(vec![json!({"image_url": good}); 17])), bad("image", "too_many_images"));
    m.add("jedit 16 images", edit(json!(vec![json!({"image_url": good}); 16])), ok());
    m.add(
        "jedit second bad",
        edit(json!([{"image_url": good}, {"image_url": "data:image/png;base64,%%"}])),
        bad("images[1].image_url", "invalid_image_url"),
    );

    // Data URLs and references.
    let png_bytes = png(16, 16, [1, 2, 3]);
    let refs: Vec<(&str, String, Expect)> = vec![
        ("bad base64", "data:image/png;base64,!!!".into(), bad("images[0].image_url", "invalid_image_url")),
        ("not base64 encoded", "data:image/png,rawbytes".into(), bad("images[0].image_url", "invalid_image_url")),
        ("no comma", "data:image/png;base64".into(), bad("images[0].image_url", "invalid_image_url")),
        ("empty data", "data:image/png;base64,".into(), bad_image("images[0].image_url")),
        ("data:,", "data:,".into(), bad("images[0].image_url", "invalid_image_url")),
        (
            "url-safe base64",
            format!(
                "data:image/png;base64,{}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(vec![0xfb; 30])
            ),
            bad("images[0].image_url", "invalid_image_url"),
        ),
        ("text/plain media, png bytes (sniffed)", data_url("text/plain", &png_bytes), ok()),
        ("image/jpeg media, png bytes (sniffed)", data_url("image/jpeg", &png_bytes), ok()),
        (
            "image/png media, gif bytes",
            data_url("image/png", b"GIF89a\x01\x00\x01\x00"),
            bad_image("images[0].image_url"),
        ),
        ("text/html media, html bytes", data_url("text/html", b"<html></html>"), bad_image("images[0].image_url")),
        ("bare base64 png", b64(&png_bytes), ok()),
        ("bare base64 gif", b64(b"GIF89a\x01\x00\x01\x00"), bad("images[0].image_url", "invalid_image_url")),
        ("ftp url", "ftp://example.com/a.png".into(), bad("images[0].image_url", "invalid_image_url")),
        ("malformed url", "http://[::1".into(), bad("images[0].image_url", "invalid_image_url")),
        ("host not allowed", "https://example.com/a.png".into(), bad("images[0].image_url", "invalid_image_url")),
        ("loopback not allowed", "http://127.0.0.1:1/a.png".into(), bad("images[0].image_url", "invalid_image_url")),
        (
            "metadata address",
            "http://169.254.169.254/latest/meta-data".into(),
            bad("images[0].image_url", "invalid_image_url"),
        ),
        ("empty string", String::new(), bad("images[0].image_url", "invalid_image_url")),
        (
            "base64 with line breaks",
            format!(
                "data:image/png;base64,{}",
                b64(&png_bytes)
                    .as_bytes()
                    .chunks(20)
                    .map(|c| std::str::from_utf8(c).unwrap())
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
            ok(),
        ),
    ];
    for (name, url, expect) in refs {
        m.add(format!("jedit ref {name}"), edit(json!([{"image_url": url}])), expect);
    }
    for (name, bytes) in broken_images() {
        m.add(
            format!("jedit broken {name}"),
            edit(json!([{"image_url": data_url("image/png", &bytes)}])),
            bad_image("images[0].image_url"),
        );
    }

    // `image` and `mask` fields.
    let base = json!({"model": "test-image", "prompt": "p"});
    m.add("jedit image string", Req::json(EDIT, &with(&base, "image", json!(good))), ok());
    m.add("jedit image list", Req::json(EDIT, &with(&base, "image", json!([good, {"image_url": good}]))), ok());
    m.add("jedit image number", Req::json(EDIT, &with(&base, "image", json!(5))), bad("image", "invalid_type"));
    m.add(
        "jedit image empty list",
        Req::json(EDIT, &with(&base, "image", json!([]))),
        bad("image", "missing_required_parameter"),
    );
    m.add("jedit image list of two strings", Req::json(EDIT, &with(&base, "image", json!([good, good]))), ok());
    m.add(
        "jedit image list of a string and a file id",
        Req::json(EDIT, &with(&base, "image", json!([good, "file-1"]))),
        bad("image[1]", "invalid_image_url"),
    );
    m.add(
        "jedit image list bad item",
        Req::json(EDIT, &with(&base, "image", json!([good, "nope"]))),
        bad("image[1]", "invalid_image_url"),
    );
    let small_mask = crate::helpers::data_url(&mask(8, 8, |_, _| 0));
    let fit_mask = crate::helpers::data_url(&mask(16, 16, |_, _| 0));
    let with_mask = |mask: Value| {
        let mut body = with(&base, "image", json!(good));
        body["mask"] = mask;
        Req::json(EDIT, &body)
    };
    m.add("jedit mask ok", with_mask(json!({"image_url": fit_mask})), ok());
    m.add("jedit mask wrong size", with_mask(json!({"image_url": small_mask})), bad("mask.image_url", "invalid_value"));
    m.add("jedit mask string wrong size", with_mask(json!(small_mask)), bad("mask", "invalid_value"));
    m.add("jedit two masks", with_mask(json!([fit_mask, fit_mask])), bad("mask", "invalid_value"));
    m.add(
        "jedit mask no alpha",
        with_mask(json!(crate::helpers::data_url(&png(16, 16, [0, 0, 0])))),
        bad_image("mask"),
    );
    m.add("jedit mask number", with_mask(json!(1)), bad("mask", "invalid_type"));
    m.add("jedit mask gif", with_mask(json!(data_url("image/gif", b"GIF89a\x01\x00\x01\x00"))), bad_image("mask"));
    m.add(
        "jedit mask without image",
        Req::json(EDIT, &with(&base, "mask", json!(fit_mask))),
        bad("image", "missing_required_parameter"),
    );
    m.add(
        "jedit unsupported operation",
        Req::json(EDIT, &json!({"model": "test-dalle", "prompt": "p", "image": good})),
        bad("model", "unsupported_operation"),
    );
    m.add(
        "jedit strength 1.5",
        Req::json(EDIT, &json!({"model": "test-image", "prompt": "p", "image": good, "strength": 1.5})),
        bad("strength", "invalid_value"),
    );
    m.add(
        "jedit strength -0.1",
        Req::json(EDIT, &json!({"model": "test-image", "prompt": "p", "image": good, "strength": -0.1})),
        bad("strength", "invalid_value"),
    );
    m.add(
        "jedit strength string",
        Req::json(EDIT, &json!({"model": "test-image", "prompt": "p", "image": good, "strength": "strong"})),
        bad("strength", "invalid_type"),
    );
    m.add(
        "jedit no prompt",
        Req::json(EDIT, &json!({"model": "test-image", "image": good})),
        bad("prompt", "missing_required_parameter"),
    );
    m.add(
        "jedit style (generations only)",
        Req::json(EDIT, &json!({"model": "test-image", "prompt": "p", "image": good, "style": "vivid"})),
        bad("style", "unknown_parameter"),
    );
}

/// Every way a multipart edit may name its images.
const IMAGE_FIELDS: [&str; 5] = ["image", "image[]", "image[0]", "image.0", "image.0.items"];

fn image_param(field: &str) -> &'static str {
    if field == "image" { "image" } else { "image[0]" }
}

fn multipart_edits(m: &mut Matrix) {
    let img = || png(16, 16, [9, 9, 9]);
    let common = || vec![t("model", "test-image"), t("prompt", "p")];
    let form = |extra: Vec<P>| {
        let mut parts = common();
        parts.extend(extra);
        Req::form(EDIT, &parts)
    };
    for field in IMAGE_FIELDS {
        m.add(format!("medit {field} valid"), form(vec![f(field, img())]), ok());
        m.add(
            format!("medit {field} + mask"),
            form(vec![f(field, img()), f("mask", mask(16, 16, |x, _| if x < 8 { 255 } else { 0 }))]),
            ok(),
        );
        m.add(
            format!("medit {field} + mask[]"),
            form(vec![f(field, img()), f("mask[]", mask(16, 16, |_, _| 0))]),
            ok(),
        );
        m.add(
            format!("medit {field} mask size mismatch"),
            form(vec![f(field, img()), f("mask", mask(8, 16, |_, _| 0))]),
            bad("mask", "invalid_value"),
        );
        m.add(
            format!("medit {field} mask without alpha"),
            form(vec![f(field, img()), f("mask", png(16, 16, [0, 0, 0]))]),
            bad_image("mask"),
        );
        m.add(
            format!("medit {field} as a data url text part"),
            form(vec![t(field, crate::helpers::data_url(&img()))]),
            ok(),
        );
        m.add(
            format!("medit {field} plain text"),
            form(vec![t(field, "<string>")]),
            bad(image_param(field), "invalid_type"),
        );
        m.add(
            format!("medit {field} bad data url"),
            form(vec![t(field, "data:image/png;base64,!!")]),
            bad(image_param(field), "invalid_image_url"),
        );
        m.add(
            format!("medit {field} file of text"),
            form(vec![f(field, b"hello".to_vec())]),
            bad_image(image_param(field)),
        );
        m.add(
            format!("medit {field} gif"),
            form(vec![f(field, b"GIF89a\x01\x00\x01\x00".to_vec())]),
            bad_image(image_param(field)),
        );
    }
    for (name, bytes) in broken_images() {
        m.add(format!("medit broken {name}"), form(vec![f("image", bytes.clone())]), bad_image("image"));
        m.add(format!("medit broken mask {name}"), form(vec![f("image", img()), f("mask", bytes)]), bad_image("mask"));
    }
    for (name, bytes) in odd_valid_images() {
        m.add(format!("medit odd {name}"), form(vec![f("image", bytes)]), ok());
    }
    // Odd encodings as masks: valid when they have alpha and the size matches.
    m.add("medit mask 16-bit rgba", form(vec![f("image", img()), f("mask", png16_rgba(16, 16))]), ok());
    m.add("medit mask palette tRNS", form(vec![f("image", img()), f("mask", png_palette(16, 16, true))]), ok());
    m.add("medit mask gray alpha", form(vec![f("image", img()), f("mask", png_gray_alpha(16, 16))]), ok());
    m.add("medit mask webp alpha", form(vec![f("image", img()), f("mask", webp_alpha(16, 16))]), ok());
    m.add(
        "medit mask palette opaque",
        form(vec![f("image", img()), f("mask", png_palette(16, 16, false))]),
        bad_image("mask"),
    );
    m.add("medit mask 16-bit rgb", form(vec![f("image", img()), f("mask", png16_rgb(16, 16))]), bad_image("mask"));
    // Broken pixels behind a valid header: every input is decoded when the request is prepared,
    // before any backend call, and the error names the input it came from.
    let cut = half(encode(&noisy(64, 64), ImageFormat::Png));
    m.add(
        "medit png pixels cut, with a mask",
        form(vec![f("image", cut.clone()), f("mask", mask(64, 64, |_, _| 0))]),
        bad_image("image"),
    );
    m.add("medit png pixels cut, no mask", form(vec![f("image", cut.clone())]), bad_image("image"));
    m.add(
        "medit second image's pixels cut",
        form(vec![f("image[]", png(16, 16, [1, 2, 3])), f("image[]", cut.clone())]),
        bad_image("image[1]"),
    );
    // The JPEG decoder fills a truncated scan in: a valid image.
    m.add(
        "medit jpeg pixels cut, with a mask",
        form(vec![f("image", half(jpeg(64, 64))), f("mask", mask(64, 64, |_, _| 0))]),
        ok(),
    );
    m.add(
        "medit interlace flag on plain data, with a mask",
        form(vec![f("image", png_interlaced(16, 16)), f("mask", mask(16, 16, |_, _| 0))]),
        bad_image("image"),
    );
    m.add(
        "medit mask pixels cut",
        form(vec![
            f("image", encode(&noisy(64, 64), ImageFormat::Png)),
            f("mask", half(mask(64, 64, |x, y| (x * y) as u8))),
        ]),
        bad_image("mask"),
    );

    // Counts.
    let many = |n: usize| (0..n).map(|_| f("image[]", png(8, 8, [1, 2, 3]))).collect::<Vec<_>>();
    m.add("medit 16 images", form(many(16)), ok());
    m.add("medit 17 images", form(many(17)), bad("image", "too_many_images"));
    m.add(
        "medit 17 mixed names",
        form((0..17).map(|i| f(IMAGE_FIELDS[i % 5], png(8, 8, [1, 2, 3]))).collect()),
        bad("image", "too_many_images"),
    );
    m.add("medit no image", form(vec![]), bad("image", "missing_required_parameter"));
    m.add("medit mask only", form(vec![f("mask", mask(8, 8, |_, _| 0))]), bad("image", "missing_required_parameter"));
    m.add(
        "medit second image bad",
        form(vec![f("image[]", img()), f("image[]", b"nope".to_vec())]),
        bad_image("image[1]"),
    );

    // Duplicated fields.
    m.add(
        "medit mask and mask[]",
        form(vec![f("image", img()), f("mask", mask(16, 16, |_, _| 0)), f("mask[]", mask(16, 16, |_, _| 0))]),
        bad("mask", "invalid_value"),
    );
    m.add(
        "medit two masks",
        form(vec![f("image", img()), f("mask", mask(16, 16, |_, _| 0)), f("mask", mask(16, 16, |_, _| 0))]),
        bad("mask", "invalid_value"),
    );
    m.add(
        "medit two different prompts",
        form(vec![f("image", img()), t("prompt", "q")]),
        bad("prompt", "invalid_value"),
    );
    m.add("medit the same prompt twice", form(vec![f("image", img()), t("prompt", "p")]), ok());
    m.add(
        "medit two different n",
        Req::form(EDIT, &[t("model", "test-image"), t("prompt", "p"), t("n", "1"), t("n", "2"), f("image", img())]),
        bad("n", "invalid_value"),
    );
    m.add(
        "medit two models",
        Req::form(EDIT, &[t("model", "test-image"), t("model", "test-fixed"), t("prompt", "p"), f("image", img())]),
        bad("model", "invalid_value"),
    );

    // Text fields with wrong values.
    let wrong: Vec<(&str, &str, &'static str)> = vec![
        ("n", "many", "invalid_type"),
        ("n", "1.5", "invalid_type"),
        ("n", "0", "integer_below_min_value"),
        ("n", "11", "integer_above_max_value"),
        ("n", "-3", "integer_below_min_value"),
        ("n", "99999999999999999999", "invalid_type"),
        ("stream", "maybe", "invalid_type"),
        ("partial_images", "x", "invalid_type"),
        ("partial_images", "9", "integer_above_max_value"),
        ("output_compression", "x", "invalid_type"),
        ("output_compression", "101", "integer_above_max_value"),
        ("seed", "-1", "invalid_type"),
        ("seed", "x", "invalid_type"),
        ("steps", "1.5", "invalid_type"),
        ("steps", "0", "integer_below_min_value"),
        ("guidance_scale", "x", "invalid_type"),
        ("guidance_scale", "-1", "invalid_value"),
        ("strength", "x", "invalid_type"),
        ("strength", "2", "invalid_value"),
        ("size", "big", "invalid_value"),
        ("size", "0x0", "invalid_value"),
        ("quality", "bogus", "invalid_value"),
        ("background", "bogus", "invalid_value"),
        ("output_format", "gif", "invalid_value"),
        ("moderation", "bogus", "invalid_value"),
        ("response_format", "file", "invalid_value"),
        ("input_fidelity", "bogus", "invalid_value"),
        ("style", "vivid", "unknown_parameter"),
        ("foo", "1", "unknown_parameter"),
        ("images", "x", "unknown_parameter"),
    ];
    for (name, value, code) in wrong {
        m.add(format!("medit {name}={value}"), form(vec![f("image", img()), t(name, value)]), bad(name, code));
    }
    // A file where text belongs, and text that is not UTF-8.
    for name in ["prompt", "n", "size", "model"] {
        m.add(
            format!("medit {name} as a file"),
            form(vec![f("image", img()), f(name, b"x".to_vec())]),
            bad(name, "invalid_type"),
        );
    }
    m.add(
        "medit non-utf-8 prompt",
        Req::form(EDIT, &[t("model", "test-image"), t("prompt", b"\xff\xfe bad".to_vec()), f("image", img())]),
        bad("prompt", "invalid_type"),
    );
    m.add(
        "medit non-utf-8 size",
        form(vec![f("image", img()), t("size", b"\xc0\xaf".to_vec())]),
        bad("size", "invalid_type"),
    );
    m.add(
        "medit non-utf-8 image text part",
        form(vec![t("image", b"\xff\xd8 not really".to_vec())]),
        bad("image", "invalid_type"),
    );
    m.add(
        "medit empty text fields are absent",
        form(vec![f("image", img()), t("n", ""), t("size", ""), t("quality", "")]),
        ok(),
    );

    // Bodies, boundaries and content types.
    let (_, good_body) = multipart(&[t("model", "test-image"), t("prompt", "p"), f("image", img())], BOUNDARY);
    let raw = |content_type: &str, body: Vec<u8>| Req::raw(EDIT, Some(content_type), body);
    m.add("medit no boundary", raw("multipart/form-data", good_body.clone()), err(400, None, "invalid_multipart"));
    m.add(
        "medit empty boundary",
        raw("multipart/form-data; boundary=", good_body.clone()),
        err(400, None, "invalid_multipart"),
    );
    m.add(
        "medit wrong boundary",
        raw("multipart/form-data; boundary=other", good_body.clone()),
        err(400, None, "invalid_multipart"),
    );
    m.add(
        "medit unterminated",
        raw(&format!("multipart/form-data; boundary={BOUNDARY}"), good_body[..good_body.len() - 30].to_vec()),
        err(400, None, "invalid_multipart"),
    );
    m.add(
        "medit empty body",
        raw(&format!("multipart/form-data; boundary={BOUNDARY}"), Vec::new()),
        err(400, None, "invalid_multipart"),
    );
    m.add(
        "medit garbage body",
        raw(&format!("multipart/form-data; boundary={BOUNDARY}"), b"garbage\r\n".to_vec()),
        err(400, None, "invalid_multipart"),
    );
    m.add(
        "medit part without a name",
        raw(
            &format!("multipart/form-data; boundary={BOUNDARY}"),
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data\r\n\r\nx\r\n--{BOUNDARY}--\r\n").into_bytes(),
        ),
        err(400, None, "invalid_multipart"),
    );
    m.add(
        "medit part without headers",
        raw(
            &format!("multipart/form-data; boundary={BOUNDARY}"),
            format!("--{BOUNDARY}\r\n\r\nx\r\n--{BOUNDARY}--\r\n").into_bytes(),
        ),
        err(400, None, "invalid_multipart"),
    );
    m.add(
        "medit boundary 200 chars",
        {
            let long = "b".repeat(200);
            let (ct, body) = multipart(&[t("model", "test-image"), t("prompt", "p"), f("image", img())], &long);
            raw(&ct, body)
        },
        ok(),
    );
    m.add("medit multipart body as json", raw("application/json", good_body.clone()), err(400, None, "invalid_json"));
    m.add("medit text/plain", raw("text/plain", good_body.clone()), err(415, None, "unsupported_media_type"));
    m.add(
        "medit form-urlencoded",
        raw("application/x-www-form-urlencoded", b"prompt=p".to_vec()),
        err(415, None, "unsupported_media_type"),
    );
    m.add(
        "medit multipart/mixed",
        raw(&format!("multipart/mixed; boundary={BOUNDARY}"), good_body.clone()),
        err(415, None, "unsupported_media_type"),
    );
    m.add(
        "medit over the limit",
        form(vec![f("image", vec![0x89; MAX_BODY + 10])]),
        err(413, None, "request_too_large"),
    );
    m.add(
        "medit over the limit in text",
        form(vec![f("image", img()), t("user", "u".repeat(MAX_BODY + 10))]),
        err(413, None, "request_too_large"),
    );
    m.add(
        "medit json over the limit",
        Req::json(EDIT, &json!({"prompt": "p", "image": "x".repeat(MAX_BODY)})),
        err(413, None, "request_too_large"),
    );
    m.add(
        "medit 10000 nested arrays",
        Req::raw(EDIT, Some("application/json"), nested(10_000).into_bytes()),
        err(400, None, "invalid_json"),
    );
}

fn variations(m: &mut Matrix) {
    let img = || png(16, 16, [9, 9, 9]);
    let form = |parts: Vec<P>| {
        let mut all = vec![t("model", "test-image")];
        all.extend(parts);
        Req::form(VAR, &all)
    };
    m.add("var valid", form(vec![f("image", img())]), ok());
    m.add("var image[] valid", form(vec![f("image[]", img())]), ok());
    m.add("var n=2", form(vec![f("image", img()), t("n", "2")]), ok());
    m.add("var no image", form(vec![]), bad("image", "missing_required_parameter"));
    m.add("var two images", form(vec![f("image", img()), f("image", img())]), bad("image", "invalid_value"));
    m.add("var prompt", form(vec![f("image", img()), t("prompt", "p")]), bad("prompt", "unknown_parameter"));
    m.add(
        "var mask",
        form(vec![f("image", img()), f("mask", mask(16, 16, |_, _| 0))]),
        bad("mask", "unknown_parameter"),
    );
    m.add("var quality", form(vec![f("image", img()), t("quality", "high")]), bad("quality", "unknown_parameter"));
    m.add("var n=0", form(vec![f("image", img()), t("n", "0")]), bad("n", "integer_below_min_value"));
    m.add("var n=x", form(vec![f("image", img()), t("n", "x")]), bad("n", "invalid_type"));
    m.add("var strength=5", form(vec![f("image", img()), t("strength", "5")]), bad("strength", "invalid_value"));
    m.add("var size=1x1", form(vec![f("image", img()), t("size", "1x1")]), bad("size", "invalid_value"));
    m.add("var text image", form(vec![t("image", "cat")]), bad("image", "invalid_type"));
    m.add(
        "var dalle",
        Req::form(VAR, &[t("model", "test-dalle"), f("image", img())]),
        bad("model", "unsupported_operation"),
    );
    m.add(
        "var unknown model",
        Req::form(VAR, &[t("model", "nope"), f("image", img())]),
        err(404, Some("model"), "model_not_found"),
    );
    for (name, bytes) in broken_images() {
        m.add(format!("var broken {name}"), form(vec![f("image", bytes)]), bad_image("image"));
    }
    for (name, bytes) in odd_valid_images() {
        m.add(format!("var odd {name}"), form(vec![f("image", bytes)]), ok());
    }
    m.add(
        "var json body",
        Req::json(VAR, &json!({"model": "test-image", "image": crate::helpers::data_url(&img())})),
        bad("image", "unknown_parameter"),
    );
    m.add(
        "var json no image",
        Req::json(VAR, &json!({"model": "test-image"})),
        bad("image", "missing_required_parameter"),
    );
    m.add("var text/plain", Req::raw(VAR, Some("text/plain"), b"x".to_vec()), err(415, None, "unsupported_media_type"));
    m.add(
        "var no boundary",
        Req::raw(VAR, Some("multipart/form-data"), b"x".to_vec()),
        err(400, None, "invalid_multipart"),
    );
    m.add("var over the limit", form(vec![f("image", vec![0; MAX_BODY + 1])]), err(413, None, "request_too_large"));
}

fn models_and_files(m: &mut Matrix, app: &TestApp) {
    m.add("models list", Req::get("/v1/models"), ok());
    m.add("models get", Req::get("/v1/models/test-image"), ok());
    m.add("models unknown", Req::get("/v1/models/nope"), err(404, Some("model"), "model_not_found"));
    m.add("models percent-encoded unknown", Req::get("/v1/models/no%20pe"), err(404, Some("model"), "model_not_found"));
    m.add("models invalid utf-8 id", Req::get("/v1/models/%FF%FE"), err(404, Some("model"), "model_not_found"));
    m.add("models POST", Req::json("/v1/models", &json!({})), err(405, None, "method_not_allowed"));
    m.add(
        "models DELETE",
        Req::get("/v1/models/test-image").method(Method::DELETE),
        err(405, None, "method_not_allowed"),
    );
    m.add("models nested path", Req::get("/v1/models/a/b"), err(404, None, "unknown_url"));
    m.add("unknown route", Req::get("/v1/nothing"), err(404, None, "unknown_url"));
    m.add("unknown route with a body", Req::json("/v2/images/generations", &json!({})), err(404, None, "unknown_url"));

    let files = "/v1/images/files";
    let signer = &app.app_state.signer;
    let future = easel_server::storage::now() + 3600;
    let signed =
        |name: &str, expires: i64| format!("{files}/{name}?expires={expires}&signature={}", signer.sign(name, expires));
    let cases: Vec<(String, Expect)> = vec![
        (format!("{files}/x.png"), err(403, None, "invalid_signature")),
        (format!("{files}/x.png?expires={future}"), err(403, None, "invalid_signature")),
        (format!("{files}/x.png?signature=abc"), err(403, None, "invalid_signature")),
        (format!("{files}/x.png?expires={future}&signature=abc"), err(403, None, "invalid_signature")),
        (format!("{files}/x.png?expires={future}&signature="), err(403, None, "invalid_signature")),
        (format!("{files}/x.png?expires=soon&signature=abc"), err(403, None, "invalid_signature")),
        (format!("{files}/x.png?expires=99999999999999999999&signature=abc"), err(403, None, "invalid_signature")),
        (format!("{files}/x.png?expires=-1&signature=abc"), either(403, None, &["invalid_signature", "url_expired"])),
        (format!("{files}/x.png?expires=1&signature={}", signer.sign("x.png", 1)), err(403, None, "url_expired")),
        (
            format!("{files}/x.png?expires={future}&signature={}", signer.sign("y.png", future)),
            err(403, None, "invalid_signature"),
        ),
        (
            format!("{files}/x.png?expires={}&signature={}", future + 1, signer.sign("x.png", future)),
            err(403, None, "invalid_signature"),
        ),
        (format!("{files}/x.png?expires={future}&signature=%FF%FE"), err(403, None, "invalid_signature")),
        (
            format!("{files}/%FF.png?expires={future}&signature=abc"),
            either(403, None, &["invalid_signature", "image_not_found"]),
        ),
        (signed("x.png", future), err(404, None, "image_not_found")),
        (signed("x", future), err(404, None, "image_not_found")),
        (signed("x.gif", future), err(404, None, "image_not_found")),
        // The client normalises the dots away: another path.
        (signed("..", future), err(404, None, "unknown_url")),
        (signed("a.b.png", future), err(404, None, "image_not_found")),
    ];
    for (i, (path, expect)) in cases.into_iter().enumerate() {
        m.add(format!("files {i}: {path}"), Req::get(&path), expect);
    }
    m.add("files POST", Req::json(&format!("{files}/x.png"), &json!({})), err(405, None, "method_not_allowed"));
}

fn admin(m: &mut Matrix, real: &str) {
    let keys = "/admin/v1/keys";
    let post = |body: &[u8]| Req::raw(keys, Some("application/json"), body.to_vec());
    let bodies: Vec<(&str, Vec<u8>, Expect)> = vec![
        ("not json", b"{name".to_vec(), err(400, None, "invalid_json")),
        ("empty", Vec::new(), err(400, None, "invalid_json")),
        ("not utf-8", b"{\"name\": \"\xff\"}".to_vec(), err(400, None, "invalid_json")),
        ("10000 nested arrays", nested(10_000).into_bytes(), err(400, None, "invalid_json")),
        ("array", b"[\"a\"]".to_vec(), err(400, None, "invalid_type")),
        ("string", b"\"a\"".to_vec(), err(400, None, "invalid_type")),
        ("null", b"null".to_vec(), err(400, None, "invalid_type")),
        ("no name", b"{}".to_vec(), bad("name", "missing_required_parameter")),
        ("name number", br#"{"name": 5}"#.to_vec(), bad("name", "invalid_type")),
        ("name empty", br#"{"name": ""}"#.to_vec(), bad("name", "invalid_value")),
        ("name blank", br#"{"name": "  "}"#.to_vec(), bad("name", "invalid_value")),
        ("rpm negative", br#"{"name": "a", "rpm": -1}"#.to_vec(), bad("rpm", "invalid_type")),
        ("rpm string", br#"{"name": "a", "rpm": "5"}"#.to_vec(), bad("rpm", "invalid_type")),
        ("rpm float", br#"{"name": "a", "rpm": 1.5}"#.to_vec(), bad("rpm", "invalid_type")),
        ("rpm huge", br#"{"name": "a", "rpm": 1e30}"#.to_vec(), bad("rpm", "invalid_type")),
        (
            "monthly_tokens u64 max",
            br#"{"name": "a", "monthly_tokens": 18446744073709551615}"#.to_vec(),
            Expect::Ok(201),
        ),
        ("daily_images over i64", br#"{"name": "a", "daily_images": 9223372036854775808}"#.to_vec(), Expect::Ok(201)),
        ("models string", br#"{"name": "a", "models": "m"}"#.to_vec(), bad("models", "invalid_type")),
        ("models numbers", br#"{"name": "a", "models": [1]}"#.to_vec(), bad("models[0]", "invalid_type")),
        ("admin string", br#"{"name": "a", "admin": "yes"}"#.to_vec(), bad("admin", "invalid_type")),
        ("expires_at negative", br#"{"name": "a", "expires_at": -5}"#.to_vec(), bad("expires_at", "invalid_value")),
        (
            "expires_at string",
            br#"{"name": "a", "expires_at": "2027-01-01"}"#.to_vec(),
            bad("expires_at", "invalid_type"),
        ),
        ("unknown field", br#"{"name": "a", "rpmm": 1}"#.to_vec(), bad("rpmm", "unknown_parameter")),
        (
            "over the limit",
            format!("{{\"name\": \"{}\"}}", "n".repeat(MAX_BODY)).into_bytes(),
            err(413, None, "request_too_large"),
        ),
    ];
    for (name, body, expect) in bodies {
        m.add(format!("admin create {name}"), post(&body), expect.clone());
        if !matches!(name, "no name") {
            let patch = Req::raw(&format!("{keys}/{real}"), Some("application/json"), body).method(Method::PATCH);
            let expect = match expect {
                Expect::Ok(201) => ok(),
                other => other,
            };
            m.add(format!("admin patch {name}"), patch, expect);
        }
    }
    m.add("admin create valid", post(br#"{"name": "matrix"}"#), Expect::Ok(201));
    m.add(
        "admin patch unknown key",
        Req::raw(&format!("{keys}/nope"), Some("application/json"), b"{}".to_vec()).method(Method::PATCH),
        err(404, None, "key_not_found"),
    );
    m.add("admin get unknown key", Req::get(&format!("{keys}/nope")), err(404, None, "key_not_found"));
    m.add("admin get invalid utf-8 key", Req::get(&format!("{keys}/%FF")), err(404, None, "key_not_found"));
    m.add(
        "admin delete unknown key",
        Req::get(&format!("{keys}/nope")).method(Method::DELETE),
        err(404, None, "key_not_found"),
    );
    m.add(
        "admin PUT keys",
        Req::raw(keys, Some("application/json"), b"{}".to_vec()).method(Method::PUT),
        err(405, None, "method_not_allowed"),
    );
    m.add("admin list", Req::get(keys), ok());

    let usage = "/admin/v1/usage";
    let queries: Vec<(&str, Expect)> = vec![
        ("", ok()),
        ("?by=day&since=2020-01-01&until=2030-01-01", ok()),
        ("?key=a&key=b", ok()),
        ("?by=week", bad("by", "invalid_value")),
        ("?by=", bad("by", "invalid_value")),
        ("?by=MODEL", bad("by", "invalid_value")),
        ("?since=yesterday", bad("since", "invalid_value")),
        ("?since=", bad("since", "invalid_value")),
        ("?until=2020-13-45", bad("until", "invalid_value")),
        ("?since=99999999999999999999", bad("since", "invalid_value")),
        ("?foo=1", bad("foo", "unknown_parameter")),
        ("?by=%FF", bad("by", "invalid_value")),
        ("?%FF=1", bad("\u{FFFD}", "unknown_parameter")),
        ("?by=day&by=week", bad("by", "invalid_value")),
    ];
    for (query, expect) in queries {
        m.add(format!("admin usage {query:?}"), Req::get(&format!("{usage}{query}")), expect);
    }
    m.add("admin usage POST", Req::json(usage, &json!({})), err(405, None, "method_not_allowed"));
}

#[tokio::test]
async fn the_bad_input_matrix() {
    let app = spawn_app_with(|c| c.server.max_body_bytes = MAX_BODY, test_models()).await;
    let mut m = Matrix::default();
    generations(&mut m);
    qwen(&mut m);
    json_edits(&mut m);
    multipart_edits(&mut m);
    variations(&mut m);
    models_and_files(&mut m, &app);
    let count = m.run(&app, None).await;
    assert!(count >= 250, "{count} cases");
    eprintln!("the bad-input matrix: {count} cases");
}

/// With a key in the database, every route that needs one refuses every bad `Authorization`.
#[tokio::test]
async fn the_auth_matrix() {
    let app = spawn_app_with(|c| c.server.max_body_bytes = MAX_BODY, test_models()).await;
    let root =
        app.app_state.keys.create(KeySettings { admin: Some(true), ..KeySettings::named("root") }).await.unwrap();
    let plain = app.app_state.keys.create(KeySettings::named("plain")).await.unwrap();
    let revoked =
        app.app_state.keys.create(KeySettings { admin: Some(true), ..KeySettings::named("gone") }).await.unwrap();
    assert!(app.app_state.keys.revoke(&revoked.record.id).await.unwrap());
    let expired = app
        .app_state
        .keys
        .create(KeySettings { admin: Some(true), expires_at: Some(1), ..KeySettings::named("old") })
        .await
        .unwrap();

    let img = png(16, 16, [9, 9, 9]);
    let routes: Vec<(&str, Req)> = vec![
        ("generations", Req::json(GEN, &json!({"model": "test-image", "prompt": "p"}))),
        ("generations bad body", Req::raw(GEN, Some("application/json"), b"{".to_vec())),
        (
            "json edits",
            Req::json(EDIT, &json!({"model": "test-image", "prompt": "p", "image": crate::helpers::data_url(&img)})),
        ),
        ("multipart edits", Req::form(EDIT, &[t("model", "test-image"), t("prompt", "p"), f("image", img.clone())])),
        ("variations", Req::form(VAR, &[t("model", "test-image"), f("image", img.clone())])),
        ("models", Req::get("/v1/models")),
        ("model", Req::get("/v1/models/test-image")),
        ("admin keys", Req::get("/admin/v1/keys")),
        ("admin create", Req::json("/admin/v1/keys", &json!({"name": "x"}))),
        ("admin usage", Req::get("/admin/v1/usage?by=day")),
        ("metrics", Req::get("/metrics")),
    ];
    let headers: Vec<(&str, Option<Vec<u8>>)> = vec![
        ("missing", None),
        ("Basic", Some(format!("Basic {}", b64(b"user:pass")).into_bytes())),
        ("Basic with the key", Some(format!("Basic {}", b64(root.plaintext.as_bytes())).into_bytes())),
        ("empty bearer", Some(b"Bearer ".to_vec())),
        ("bare Bearer", Some(b"Bearer".to_vec())),
        ("empty", Some(Vec::new())),
        ("malformed key", Some(b"Bearer sk-easel-nope".to_vec())),
        ("key without scheme", Some(root.plaintext.clone().into_bytes())),
        ("Token scheme", Some(format!("Token {}", root.plaintext).into_bytes())),
        ("key with junk after", Some(format!("Bearer {} junk", root.plaintext).into_bytes())),
        // The last character changed (to one it is not: the secret is random).
        ("forged secret", Some(format!("Bearer {}", forge(&root.plaintext)).into_bytes())),
        ("non-ascii", Some(b"Bearer \xe9\xe9".to_vec())),
        ("revoked key", Some(format!("Bearer {}", revoked.plaintext).into_bytes())),
        ("expired key", Some(format!("Bearer {}", expired.plaintext).into_bytes())),
    ];
    let mut m = Matrix::default();
    for (route, req) in &routes {
        for (name, value) in &headers {
            let req = match value {
                Some(v) => req.clone().header("authorization", v.clone()),
                None => Req { no_auth: true, ..req.clone() },
            };
            m.add(format!("auth {route} / {name}"), req, err(401, None, "invalid_api_key"));
        }
    }
    // A plain key on the admin API.
    for path in ["/admin/v1/keys", "/admin/v1/usage", "/admin/v1/keys/nope"] {
        let req = Req::get(path).header("authorization", format!("Bearer {}", plain.plaintext));
        m.add(format!("auth plain key on {path}"), req, err(403, None, "admin_key_required"));
    }
    // Hosted files need no key: a bad link is a 403 whatever the header says.
    let req = Req::get("/v1/images/files/x.png").header("authorization", "Basic x");
    m.add("auth files ignore the header", req, err(403, None, "invalid_signature"));
    // A valid key still works on every route.
    for (route, req) in routes {
        let expect = match route {
            "generations bad body" => err(400, None, "invalid_json"),
            "admin create" => Expect::Ok(201),
            "metrics" => Expect::Text,
            _ => ok(),
        };
        m.add(format!("auth {route} / valid key"), req, expect);
    }
    // The admin API's bad bodies and queries, as the admin (a key made here would close the
    // open server of the main matrix).
    admin(&mut m, &plain.record.id);
    let count = m.run(&app, Some(&root.plaintext)).await;
    eprintln!("the auth matrix: {count} cases");
}

/// A client that sends headers and part of a body, then stalls: the server keeps serving others,
/// and answers the stalled request with a 400 envelope once `server.body_timeout_secs` passes.
#[tokio::test]
async fn a_stalled_body_does_not_stop_the_server() {
    let app = spawn_app_with(
        |c| {
            c.server.max_body_bytes = MAX_BODY;
            c.server.body_timeout_secs = 2;
        },
        test_models(),
    )
    .await;
    let address = app.address.trim_start_matches("http://").to_string();
    let mut stalled = tokio::net::TcpStream::connect(&address).await.unwrap();
    stalled
        .write_all(
            b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"prompt\": ",
        )
        .await
        .unwrap();
    // Others are served meanwhile.
    for _ in 0..3 {
        json_body(app.generate(json!({"model": "test-image", "prompt": "p"})).await, 200).await;
    }
    // The body times out (server.body_timeout_secs): an envelope, not a connection held forever.
    let mut buffer = [0u8; 2048];
    let read = tokio::time::timeout(Duration::from_secs(6), stalled.read(&mut buffer)).await;
    let answer = String::from_utf8_lossy(&buffer[..read.expect("no answer to a stalled body").unwrap()]).to_string();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("\"error\"") && answer.contains("could not be read"), "{answer}");
    assert_eq!(app.app_state.drain.in_flight(), 0, "the stalled request is over");
    drop(stalled);
    json_body(app.generate(json!({"model": "test-image", "prompt": "after"})).await, 200).await;
}

/// `key` with its last character replaced by a different one.
fn forge(key: &str) -> String {
    let (head, last) = key.split_at(key.len() - 1);
    format!("{head}{}", if last == "x" { "y" } else { "x" })
}
