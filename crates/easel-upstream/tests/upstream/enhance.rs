//! Prompt enhancement through a chat-completions endpoint.

use std::sync::Arc;

use async_trait::async_trait;
use easel_core::backend::{BackendOutput, Capabilities, ImageBackend, PixelInput, SizeRule};
use easel_core::types::{Operation, Quality};
use serde_json::json;

use super::*;

fn enhancer(fake: &Fake, extra: Value) -> Value {
    let mut t = json!({
        "base_url": fake.url(),
        "api_key_env": KEY_ENV,
        "model": "qwen3.5-397b-a17b",
        "system_prompt": "Rewrite the prompt.",
        "timeout_secs": 2.0,
        "retries": 1,
    });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        t[k] = v;
    }
    t
}

#[tokio::test]
async fn a_pe_model_rewrites_once_and_turns_dashscope_prompt_extend_off() {
    let fake = Fake::start(&api_key()).await;
    let gw =
        Gateway::from_config(&[provider("dash", "dashscope", &fake, json!({}))], Some(&enhancer(&fake, json!({}))))
            .unwrap();
    let options = json!({"targets": [{"provider": "dash", "model": "qwen-image-plus"}]});
    assert!(Gateway::wants_enhancement("qwen-image-plus-pe", &options));
    assert!(!Gateway::wants_enhancement("qwen-image-plus", &options));
    let inner = gw.build_model("qwen-image-plus-pe", &options).unwrap();
    assert_eq!(inner.capabilities().max_n_per_call, 1);
    let m = gw.enhance("qwen-image-plus-pe", inner, &options).unwrap();
    assert_eq!(m.kind(), "dashscope");

    let out = run(&m, call(Operation::Generate, 2, (1328, 1328))).await.unwrap();
    assert_eq!(out.images.len(), 2);
    assert_eq!(out.revised_prompt.as_deref(), Some("ENHANCED: a red fox in the snow"));

    let chats = fake.hits("/chat/completions");
    assert_eq!(chats.len(), 1, "one rewrite per request, not per chunk");
    let chat = chats[0].json.as_ref().unwrap();
    assert_eq!(chat["model"], "qwen3.5-397b-a17b");
    assert_eq!(chat["messages"][0]["content"], "Rewrite the prompt.");
    let calls = fake.hits("multimodal-generation");
    assert_eq!(calls.len(), 2);
    for c in calls {
        let body = c.json.unwrap();
        assert_eq!(body["parameters"]["prompt_extend"], false);
        assert_eq!(body["input"]["messages"][0]["content"][0]["text"], "ENHANCED: a red fox in the snow");
    }
}

/// A stand-in local backend that records the prompts it gets.
#[derive(Debug)]
struct Local {
    caps: Capabilities,
    prompts: std::sync::Mutex<Vec<(String, u32, Option<u64>)>>,
}

#[async_trait]
impl ImageBackend for Local {
    fn kind(&self) -> &'static str {
        "local"
    }
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }
    async fn call(
        &self,
        call: BackendCall,
        _cx: easel_core::backend::CallContext,
    ) -> Result<BackendOutput, BackendError> {
        self.prompts.lock().unwrap().push((call.prompt.clone(), call.n, call.options.extensions.seed));
        let images = (0..call.n)
            .map(|_| easel_core::backend::OutputImage::Encoded { bytes: png(8, 8).into(), format: OutputFormat::Png })
            .collect();
        Ok(BackendOutput { images, ..BackendOutput::default() })
    }
}

fn local(max_n_per_call: u32) -> Arc<Local> {
    Arc::new(Local {
        caps: Capabilities {
            operations: vec![Operation::Generate],
            sizes: SizeRule::Fixed(vec![ImageSize::new(8, 8)]),
            native_sizes: None,
            default_size: ImageSize::new(8, 8),
            picks_size: false,
            max_n: 4,
            max_n_per_call,
            max_input_images: 0,
            native_masks: false,
            transparency: false,
            qualities: vec![Quality::Auto],
            default_quality: Quality::High,
            partial_images: false,
            max_prompt_chars: 1000,
            extensions: Default::default(),
            pixels: PixelInput::Bytes,
        },
        prompts: Default::default(),
    })
}

#[tokio::test]
async fn any_backend_can_be_enhanced_and_seeds_follow_the_chunks() {
    let fake = Fake::start(&api_key()).await;
    let gw = Gateway::from_config(&[], Some(&enhancer(&fake, json!({})))).unwrap();
    let inner = local(1);
    let m = gw.enhance("sd-pe", inner.clone(), &json!({"family": "sd15", "path": "/models/x"})).unwrap();
    assert_eq!(m.capabilities().max_n_per_call, 4, "the whole n arrives at once");
    let mut c = call(Operation::Generate, 3, (8, 8));
    c.options.extensions.seed = Some(10);
    let out = run(&m, c).await.unwrap();
    assert_eq!(out.images.len(), 3);
    let prompts = inner.prompts.lock().unwrap().clone();
    let seeds: Vec<_> = prompts.iter().map(|p| p.2).collect();
    assert_eq!(seeds, vec![Some(10), Some(11), Some(12)]);
    assert!(prompts.iter().all(|p| p.0 == "ENHANCED: a red fox in the snow" && p.1 == 1));
}

#[tokio::test]
async fn a_failing_enhancer_falls_back_to_the_prompt_unless_required() {
    let fake = Fake::start(&api_key()).await;
    let gw = Gateway::from_config(&[], Some(&enhancer(&fake, json!({"retries": 0})))).unwrap();
    let inner = local(4);
    let m = gw.enhance("m-pe", inner.clone(), &json!({})).unwrap();
    fake.push(Reply::Json(503, json!({"error": {"message": "down"}}), vec![]));
    let out = run(&m, call(Operation::Generate, 1, (8, 8))).await.unwrap();
    assert_eq!(out.revised_prompt, None);
    assert_eq!(inner.prompts.lock().unwrap()[0].0, "a red fox in the snow");

    let strict = Gateway::from_config(&[], Some(&enhancer(&fake, json!({"retries": 0, "required": true})))).unwrap();
    let m = strict.enhance("m-pe", local(4), &json!({})).unwrap();
    fake.push(Reply::Json(503, json!({"error": {"message": "down"}}), vec![]));
    let err = run(&m, call(Operation::Generate, 1, (8, 8))).await.unwrap_err();
    assert!(matches!(err, BackendError::Upstream { status: Some(503), .. }), "{err:?}");
}

#[tokio::test]
async fn enhancing_without_an_enhancer_is_a_config_error() {
    let gw = Gateway::from_config(&[], None).unwrap();
    let err = gw.enhance("x-pe", local(1), &json!({})).err().unwrap().to_string();
    assert!(err.contains("[prompt_enhancer]"), "{err}");
}

#[tokio::test]
async fn a_vision_enhancer_sees_the_edit_images() {
    let fake = Fake::start(&api_key()).await;
    let gw = Gateway::from_config(
        &[provider("dash", "dashscope", &fake, json!({}))],
        Some(&enhancer(&fake, json!({"vision": true}))),
    )
    .unwrap();
    let options = json!({"targets": [{"provider": "dash", "model": "qwen-image-edit"}], "prompt_enhance": true});
    assert!(Gateway::wants_enhancement("qwen-image-edit", &options));
    let m = gw.enhance("qwen-image-edit", gw.build_model("qwen-image-edit", &options).unwrap(), &options).unwrap();
    let out = run(&m, edit(1, 1)).await.unwrap();
    assert_eq!(out.revised_prompt.as_deref(), Some("ENHANCED: make it blue"));
    let chat = fake.hits("/chat/completions")[0].json.clone().unwrap();
    let parts = chat["messages"][1]["content"].as_array().unwrap().clone();
    assert_eq!(parts[0]["type"], "image_url");
    assert!(parts[0]["image_url"]["url"].as_str().unwrap().starts_with("data:image/png;base64,"));
    assert_eq!(parts[1]["text"], "make it blue");
}
