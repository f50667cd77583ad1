//! Easel nodes describe their own models: the `capabilities` object each model carries in
//! `GET /v1/models` (written by [`describe`]) and what a gateway in front of the node reads from it
//! at start ([`discover`], [`read`]).
//!
//! A provider of kind `easel` is another Easel node, whose models can be anything (an sd-turbo
//! making 512x512, a relayed gpt-image-2): no profile guessed from a model name fits them. So the
//! gateway asks the node. The object holds what a client may ask of the model (`Capabilities`
//! less what is the node's own business: its native sizes, its per-call n, whether it uses masks
//! itself), so the gateway validates requests as the node will and never plans a resize or a
//! fan-out the node does itself.
//!
//! Shape (every key always present, except `max_pixels`/`max_aspect` where unbounded):
//! `{"operations": ["generate", "edit"], "sizes": ["512x512"] | {"multiple_of", "min_edge",
//! "max_edge", "min_pixels", "max_pixels", "max_aspect"}, "default_size": "512x512", "picks_size": false, "max_n": 10,
//! "max_input_images": 1, "transparency": false, "qualities": ["auto", ...], "default_quality":
//! "high", "partial_images": false, "max_prompt_chars": 1000, "extensions": {"steps": {"min",
//! "max"}, "guidance_scale": {"min", "max", "min_exclusive"}, "strength": {...}}}`.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail};
use easel_core::backend::{Capabilities, ExtensionRanges, PixelInput, SizeRule};
use easel_core::range::{FloatRange, IntRange};
use easel_core::types::{ImageSize, Operation, Quality};
use serde_json::{Map, Value, json};

use crate::config::size_rule;
use crate::provider::Provider;

/// The `capabilities` object for one model.
pub fn describe(caps: &Capabilities) -> Value {
    let ops: Vec<&str> = caps.operations.iter().map(|o| o.as_str()).collect();
    let qualities: Vec<&str> = caps.qualities.iter().map(|q| q.as_str()).collect();
    let floats = |r: &FloatRange| {
        let mut v = json!({"min": r.min, "max": r.max});
        if r.min_exclusive {
            v["min_exclusive"] = json!(true);
        }
        v
    };
    let x = &caps.extensions;
    json!({
        "operations": ops,
        "sizes": rule(&caps.sizes),
        "default_size": caps.default_size.to_string(),
        "picks_size": caps.picks_size,
        "max_n": caps.max_n,
        "max_input_images": caps.max_input_images,
        "transparency": caps.transparency,
        "qualities": qualities,
        "default_quality": caps.default_quality.as_str(),
        "partial_images": caps.partial_images,
        "max_prompt_chars": caps.max_prompt_chars,
        "extensions": {
            "steps": {"min": x.steps.min, "max": x.steps.max},
            "guidance_scale": floats(&x.guidance_scale),
            "strength": floats(&x.strength),
        },
    })
}

fn rule(r: &SizeRule) -> Value {
    match r {
        SizeRule::Fixed(sizes) => json!(sizes.iter().map(ToString::to_string).collect::<Vec<_>>()),
        &SizeRule::Range { multiple_of, min_edge, max_edge, min_pixels, max_pixels, max_aspect } => {
            let mut m = Map::new();
            m.insert("multiple_of".into(), json!(multiple_of));
            m.insert("min_edge".into(), json!(min_edge));
            m.insert("max_edge".into(), json!(max_edge));
            m.insert("min_pixels".into(), json!(min_pixels));
            if max_pixels < u64::MAX {
                m.insert("max_pixels".into(), json!(max_pixels));
            }
            if max_aspect.is_finite() {
                m.insert("max_aspect".into(), json!(max_aspect));
            }
            Value::Object(m)
        }
    }
}

/// Capabilities for a gateway's target from a node's `capabilities` object: what the client may
/// ask is what the node accepts; the node makes every size and every n it accepts itself.
pub fn read(v: &Value) -> anyhow::Result<Capabilities> {
    let list = |key: &str| -> anyhow::Result<Vec<String>> {
        v.get(key)
            .and_then(Value::as_array)
            .with_context(|| format!("'{key}' is missing or not a list"))?
            .iter()
            .map(|i| i.as_str().map(str::to_string).with_context(|| format!("'{key}' holds a non-string")))
            .collect()
    };
    let uint = |key: &str| -> anyhow::Result<u64> {
        v.get(key).and_then(Value::as_u64).with_context(|| format!("'{key}' is missing or not a number"))
    };
    let flag = |key: &str| v.get(key).and_then(Value::as_bool).unwrap_or(false);
    let operations = list("operations")?
        .iter()
        .map(|o| o.parse::<Operation>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let qualities = list("qualities")?
        .iter()
        .map(|q| q.parse::<Quality>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let sizes = size_rule(v.get("sizes").context("'sizes' is missing")?, "sizes")?;
    let default_size = v
        .get("default_size")
        .and_then(Value::as_str)
        .map(ImageSize::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?
        .unwrap_or_else(|| sizes.nearest(ImageSize::new(1024, 1024)));
    let default_quality = match v.get("default_quality").and_then(Value::as_str) {
        Some(q) => q.parse::<Quality>().map_err(anyhow::Error::msg)?,
        None => Quality::Auto,
    };
    let max_n = u32::try_from(uint("max_n")?).context("'max_n' is too large")?.max(1);
    let x = v.get("extensions");
    let defaults = ExtensionRanges::default();
    let int = |key: &str, d: IntRange| {
        let r = x.and_then(|x| x.get(key));
        let get = |k: &str, d: i64| r.and_then(|r| r.get(k)).and_then(Value::as_i64).unwrap_or(d);
        IntRange::new(get("min", d.min), get("max", d.max))
    };
    let float = |key: &str, d: FloatRange| {
        let r = x.and_then(|x| x.get(key));
        let get = |k: &str, d: f32| r.and_then(|r| r.get(k)).and_then(Value::as_f64).map_or(d, |f| f as f32);
        let (min, max) = (get("min", d.min), get("max", d.max));
        let exclusive = r.and_then(|r| r.get("min_exclusive")).and_then(Value::as_bool).unwrap_or(false);
        if exclusive { FloatRange::above(min, max) } else { FloatRange::new(min, max) }
    };
    let edits = operations.contains(&Operation::Edit);
    Ok(Capabilities {
        operations,
        sizes,
        native_sizes: None,
        default_size,
        picks_size: flag("picks_size"),
        max_n,
        max_n_per_call: max_n,
        max_input_images: if edits { uint("max_input_images")? as usize } else { 0 },
        native_masks: edits,
        transparency: flag("transparency"),
        qualities,
        default_quality,
        partial_images: flag("partial_images"),
        max_prompt_chars: uint("max_prompt_chars")? as usize,
        extensions: ExtensionRanges {
            steps: int("steps", defaults.steps),
            guidance_scale: float("guidance_scale", defaults.guidance_scale),
            strength: float("strength", defaults.strength),
        },
        pixels: PixelInput::Bytes,
    })
}

/// Reads the node's models into `p.node_models`, unless already read.
pub async fn learn(p: &Provider) -> anyhow::Result<()> {
    if p.node_models.get().is_none() {
        let models = discover(p).await?;
        tracing::info!(provider = %p.id, models = models.len(), "read the capabilities of an Easel node's models");
        let _ = p.node_models.set(models);
    }
    Ok(())
}

/// How long a gateway waits for a node's model list.
const DISCOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// The node's models and their capabilities, from `GET {base}/models`. Models listed without a
/// `capabilities` object (an older node) are left out.
pub async fn discover(p: &Provider) -> anyhow::Result<HashMap<String, Capabilities>> {
    let request = p.get("/models").timeout(DISCOVER_TIMEOUT.min(p.policy.timeout));
    let response = request.send().await.with_context(|| format!("GET {}", p.url("/models")))?;
    let status = response.status();
    let body: Value = response.json().await.with_context(|| format!("GET {}: not a model list", p.url("/models")))?;
    if !status.is_success() {
        bail!("GET {} answered HTTP {status}: {}", p.url("/models"), body["error"]["message"]);
    }
    let mut models = HashMap::new();
    for m in body["data"].as_array().context("the model list has no 'data'")? {
        let (Some(id), Some(caps)) = (m["id"].as_str(), m.get("capabilities")) else { continue };
        let caps = read(caps).with_context(|| format!("model '{id}': its 'capabilities' could not be read"))?;
        models.insert(id.to_string(), caps);
    }
    Ok(models)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_survive_the_trip() {
        let caps = Capabilities {
            operations: vec![Operation::Generate, Operation::Edit],
            sizes: SizeRule::Range {
                multiple_of: 8,
                min_edge: 256,
                max_edge: 1024,
                min_pixels: 0,
                max_pixels: 1024 * 1024,
                max_aspect: 4.0,
            },
            native_sizes: Some(SizeRule::fixed(&[(512, 512)])),
            default_size: ImageSize::new(512, 512),
            picks_size: true,
            max_n: 4,
            max_n_per_call: 1,
            max_input_images: 1,
            native_masks: false,
            transparency: false,
            qualities: vec![Quality::Auto, Quality::Low],
            default_quality: Quality::Low,
            partial_images: true,
            max_prompt_chars: 300,
            extensions: ExtensionRanges {
                steps: IntRange::new(1, 8),
                guidance_scale: FloatRange::new(0.0, 2.0),
                strength: FloatRange::above(0.0, 1.0),
            },
            pixels: PixelInput::AtCallSize,
        };
        let back = read(&describe(&caps)).unwrap();
        assert_eq!(back.operations, caps.operations);
        assert_eq!(back.sizes, caps.sizes);
        assert_eq!(back.native_sizes, None, "the node makes its sizes itself");
        assert_eq!((back.max_n, back.max_n_per_call), (4, 4), "and its n");
        assert_eq!(back.default_size, caps.default_size);
        assert!(back.picks_size, "a node's relay of GPT image still picks its size for auto");
        assert_eq!(back.qualities, caps.qualities);
        assert_eq!(back.default_quality, Quality::Low);
        assert_eq!(back.extensions, caps.extensions);
        assert!(back.native_masks && back.partial_images && back.pixels == PixelInput::Bytes);
        assert_eq!((back.max_input_images, back.max_prompt_chars), (1, 300));
        let any = read(&describe(&Capabilities { sizes: SizeRule::any(), ..caps })).unwrap();
        assert!(any.sizes.allows(ImageSize::new(7, 9999)));
    }
}
