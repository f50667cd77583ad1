//! Config parsing: clear errors, secrets only from the environment.

use serde_json::json;

use super::*;

fn err(providers: &[Value]) -> String {
    format!("{:#}", Gateway::from_config(providers, None).expect_err("an error"))
}

#[tokio::test]
async fn config_errors_name_the_problem() {
    let fake = Fake::start(&api_key()).await;
    let literal = provider("p", "openai", &fake, json!({"api_key": "sk-live-123"}));
    assert!(err(&[literal]).contains("unknown field `api_key`"));

    let unset = provider("p", "openai", &fake, json!({"api_key_env": "EASEL_TEST_SURELY_UNSET_KEY"}));
    let e = err(&[unset]);
    assert!(e.contains("EASEL_TEST_SURELY_UNSET_KEY") && e.contains("provider 'p'"), "{e}");

    let bad_kind = provider("p", "bedrock", &fake, json!({}));
    assert!(err(&[bad_kind]).contains("unknown variant `bedrock`"));

    let bad_profile = provider("p", "openai", &fake, json!({"profile": "nope"}));
    assert!(err(&[bad_profile]).contains("unknown profile 'nope'"));

    let bad_host = provider("p", "openai", &fake, json!({"allow_hosts": ["ftp://x"]}));
    assert!(err(&[bad_host]).contains("unsupported scheme"));

    let p = provider("p", "openai", &fake, json!({}));
    assert!(err(&[p.clone(), p.clone()]).contains("configured twice"));

    let gw = gateway(&[p, provider("d", "dashscope", &fake, json!({}))]);
    let e = format!("{:#}", gw.build_model("m", &json!({"targets": [{"provider": "q", "model": "x"}]})).err().unwrap());
    assert!(e.contains("provider 'q'") && e.contains("known: d, p"), "{e}");
    let e = format!("{:#}", gw.build_model("m", &json!({"targets": [], "prompt_enhance": true})).err().unwrap());
    assert!(e.contains("at least one"), "{e}");
    let e = format!(
        "{:#}",
        gw.build_model("m", &json!({"targets": [{"provider": "p", "model": "x", "protocol": "text2image"}]}))
            .err()
            .unwrap()
    );
    assert!(e.contains("DashScope targets only"), "{e}");
    let e = format!(
        "{:#}",
        gw.build_model("m", &json!({"targets": [{"provider": "d", "model": "x", "protocol": "magic"}]})).err().unwrap()
    );
    assert!(e.contains("unknown DashScope protocol"), "{e}");
    let e = format!(
        "{:#}",
        gw.build_model("m", &json!({"targets": [{"provider": "p", "model": "x"}], "sizez": []})).err().unwrap()
    );
    assert!(e.contains("unknown field `sizez`"), "{e}");
}

#[tokio::test]
async fn capability_overrides_apply() {
    let fake = Fake::start(&api_key()).await;
    let gw = gateway(&[provider("p", "openai", &fake, json!({"profile": {"base": "generic", "max_n_per_call": 2}}))]);
    let m = gw
        .build_model(
            "m",
            &json!({
                "targets": [{"provider": "p", "model": "flux"}],
                "sizes": ["512x512", "768x768"],
                "default_size": "768x768",
                "max_n": 3,
                "prompt_enhance": false,
            }),
        )
        .unwrap();
    let caps = m.capabilities();
    assert_eq!((caps.max_n, caps.max_n_per_call), (3, 2));
    assert_eq!(caps.default_size, ImageSize::new(768, 768));
    assert!(caps.sizes.check(ImageSize::new(1024, 1024)).is_err());
}

#[tokio::test]
async fn a_model_with_mixed_targets_serves_what_any_of_them_serves() {
    let fake = Fake::start(&api_key()).await;
    let gw = gateway(&[provider("d", "dashscope", &fake, json!({})), provider("p", "openai", &fake, json!({}))]);
    let m = gw
        .build_model("m", &json!({"targets": [{"provider": "d", "model": "qwen-image-plus"}, {"provider": "p", "model": "gpt-image-1"}]}))
        .unwrap();
    let caps = m.capabilities();
    assert!(caps.supports(Operation::Generate) && caps.supports(Operation::Edit));
    assert_eq!(caps.max_n_per_call, 1, "the smallest of the targets'");
    assert!(!caps.native_masks, "masks native only when every target honours them");
    // An edit skips the DashScope target (generation only) and goes to the OpenAI one.
    run(&m, edit(1, 1)).await.unwrap();
    assert_eq!(fake.hits("/v1/images/edits").len(), 1);
    assert!(fake.hits("/api/v1/services").is_empty());
}

#[tokio::test]
async fn keys_never_appear_in_debug_output() {
    let fake = Fake::start(&api_key()).await;
    let gw = gateway(&[provider("p", "openai", &fake, json!({}))]);
    let m = model(&gw, json!([{"provider": "p", "model": "gpt-image-1"}]));
    for text in [format!("{gw:?}"), format!("{m:?}")] {
        assert!(text.contains("Secret(***)"), "{text}");
        assert!(!text.contains(&format!("\"{}\"", api_key())), "{text}");
    }
}

#[tokio::test]
async fn a_profile_that_answers_with_links_needs_allow_hosts() {
    let fake = Fake::start(&api_key()).await;
    let table = provider(
        "dg",
        "openai",
        &fake,
        json!({"profile": {"base": "dgrid", "response_format": "url"}, "allow_hosts": []}),
    );
    let gw = gateway(&[table]);
    let e =
        format!("{:#}", gw.build_model("m", &json!({"targets": [{"provider": "dg", "model": "x"}]})).err().unwrap());
    assert!(e.contains("allow_hosts is empty"), "{e}");
}

#[tokio::test]
async fn dashscope_result_hosts_are_allowed_by_default() {
    let fake = Fake::start(&api_key()).await;
    let mut table = provider("d", "dashscope", &fake, json!({}));
    table.as_object_mut().unwrap().remove("allow_hosts");
    let gw = gateway(&[table]);
    let m = model(&gw, json!([{"provider": "d", "model": "wanx-v1"}]));
    // The fake's links are on 127.0.0.1, which the default (dashscope-result*.aliyuncs.com) refuses.
    let err = run(&m, call(easel_core::types::Operation::Generate, 1, (1024, 1024))).await.unwrap_err();
    assert!(err.to_string().contains("allow_hosts"), "{err}");
}

/// The example config in the README is parsed and built, so it cannot drift from the code.
#[test]
fn the_readme_example_builds() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("```toml\n").unwrap() + "```toml\n".len();
    let end = start + readme[start..].find("```").unwrap();
    let mut config: Value = toml::from_str(&readme[start..end]).unwrap();
    // The README names real variables; the test points them at one that is set.
    for p in config["providers"].as_array_mut().unwrap() {
        p["api_key_env"] = json!(KEY_ENV);
    }
    config["prompt_enhancer"]["api_key_env"] = json!(KEY_ENV);
    let gw = Gateway::from_config(config["providers"].as_array().unwrap(), Some(&config["prompt_enhancer"])).unwrap();
    for m in config["models"].as_array().unwrap() {
        let id = m["id"].as_str().unwrap();
        let mut options = m.clone();
        options.as_object_mut().unwrap().retain(|k, _| k != "id" && k != "backend");
        let backend = gw.build_model(id, &options).unwrap();
        if Gateway::wants_enhancement(id, &options) {
            gw.enhance(id, backend, &options).unwrap();
        }
    }
}
