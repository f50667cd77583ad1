//! The upstream fault table, end to end: each fault a provider can commit (from
//! `easel_upstream::testing`'s fakes) goes through the whole server, and the client gets the
//! documented retry, fallback or a clear 502/503/504 envelope (the table in
//! `crates/easel-upstream/README.md`), while the ledger keeps exactly one usage row per request:
//! the delivered ones with their images and tokens counted once (retries never double them) and
//! under the target that served, the failed ones with nothing. Also: a 400 about a capability
//! tries the next target and a 400 about the request does not; an Easel node's capabilities come
//! from the node.

use std::time::Duration;

use easel_upstream::testing::{Fake, Reply};
use serde_json::{Value, json};
use sqlx::Row;

use crate::helpers::{TestApp, assert_error, json_body, spawn_app, spawn_app_with};

/// Cargo sets this for every test process, so providers can name it as their key variable.
const KEY_ENV: &str = "CARGO_PKG_NAME";

fn key() -> String {
    std::env::var(KEY_ENV).unwrap()
}

fn provider(id: &str, kind: &str, fake: &Fake) -> Value {
    let base = if kind == "dashscope" { fake.url() } else { format!("{}/v1", fake.url()) };
    json!({
        "id": id, "kind": kind, "base_url": base, "api_key_env": KEY_ENV,
        "allow_hosts": [format!("http://{}", fake.addr)],
        "timeout_secs": if kind == "dashscope" { 10.0 } else { 2.0 },
        "retries": 1, "backoff_base_secs": 0.01, "backoff_max_secs": 0.02, "retry_after_max_secs": 2.0,
        "circuit_failures": 1000, "poll_interval_secs": 0.01, "poll_max_interval_secs": 0.02,
    })
}

fn model(id: &str, targets: Value) -> easel_server::config::ModelConfig {
    let mut options = serde_json::Map::new();
    options.insert("targets".into(), targets);
    easel_server::config::ModelConfig { id: id.into(), backend: "upstream".into(), response_format: None, options }
}

/// `solo`: provider `a` only; `pair`: `a`, then `b`; `dash`: DashScope's wanx-v1 on `d`.
async fn app(a: &Fake, b: &Fake, d: &Fake) -> TestApp {
    let providers = vec![provider("a", "openai", a), provider("b", "openai", b), provider("d", "dashscope", d)];
    let models = vec![
        model("solo", json!([{"provider": "a", "model": "img-1"}])),
        model("pair", json!([{"provider": "a", "model": "img-1"}, {"provider": "b", "model": "img-1"}])),
        model("dash", json!([{"provider": "d", "model": "wanx-v1"}])),
    ];
    spawn_app_with(
        move |c| {
            c.providers = providers;
            c.models = models;
        },
        Vec::new(),
    )
    .await
}

/// The usage rows so far, oldest first: (outcome, status, image_count, total_tokens, backend).
async fn ledger(app: &TestApp) -> Vec<(String, i64, i64, i64, String)> {
    sqlx::query("SELECT outcome, status, image_count, total_tokens, backend FROM usage ORDER BY id")
        .fetch_all(&app.app_state.db)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get::<i64, _>(1), r.get::<i64, _>(2), r.get::<i64, _>(3), r.get(4)))
        .collect()
}

fn server_error() -> Reply {
    Reply::Json(500, json!({"error": {"message": "boom", "type": "server_error", "param": null, "code": null}}), vec![])
}

fn images(items: Value) -> Reply {
    Reply::Json(200, json!({"created": 1, "data": items}), vec![])
}

/// What the client gets.
enum Expect {
    /// 200 with one image, recorded under this backend with the fake's 30 tokens.
    Served(&'static str),
    /// An error envelope with this status and code.
    Failed(u16, &'static str),
}

struct Case {
    name: &'static str,
    model: &'static str,
    /// Scripted answers of the primary (`a`, or `d` for `dash`), in order.
    replies: Vec<Reply>,
    /// DashScope task polls answered before the normal flow.
    polls: Vec<Value>,
    expect: Expect,
    /// Requests the primary and the fallback received.
    hits: (usize, usize),
}

fn cases(a: &Fake) -> Vec<Case> {
    use Expect::*;
    let html = format!("http://{}/results/page.html", a.addr);
    let case = |name, model, replies, expect, hits| Case { name, model, replies, polls: Vec::new(), expect, hits };
    let dash_failed = json!({"request_id": "r", "output": {"task_id": "task-1", "task_status": "FAILED", "code": "InternalError.Algo", "message": "inference failed"}});
    vec![
        case(
            "429 with Retry-After: waited for, then retried",
            "solo",
            vec![Reply::Json(429, json!({"error": {"message": "slow down"}}), vec![("retry-after", "1".into())])],
            Served("openai:a/img-1"),
            (2, 0),
        ),
        case(
            "429 without Retry-After, past the retries: 503 overloaded",
            "solo",
            vec![Reply::Json(429, json!({"error": {"message": "slow down"}}), vec![]); 2],
            Failed(503, "overloaded"),
            (2, 0),
        ),
        case(
            "429 with a Retry-After too long to wait: the fallback serves",
            "pair",
            vec![Reply::Json(429, json!({"error": {"message": "quota"}}), vec![("retry-after", "3600".into())])],
            Served("openai:b/img-1"),
            (1, 1),
        ),
        case("5xx, then success: retried", "solo", vec![server_error()], Served("openai:a/img-1"), (2, 0)),
        case(
            "5xx past the retries: 502",
            "solo",
            vec![server_error(), server_error()],
            Failed(502, "upstream_error"),
            (2, 0),
        ),
        case(
            "5xx past the retries: the fallback serves",
            "pair",
            vec![server_error(), server_error()],
            Served("openai:b/img-1"),
            (2, 1),
        ),
        case("a hang: 504", "solo", vec![Reply::Hang], Failed(504, "upstream_timeout"), (1, 0)),
        case("a hang: the fallback serves", "pair", vec![Reply::Hang], Served("openai:b/img-1"), (1, 1)),
        case(
            "a truncated body, then success: retried",
            "solo",
            vec![Reply::Truncated],
            Served("openai:a/img-1"),
            (2, 0),
        ),
        case(
            "truncated bodies: 502",
            "solo",
            vec![Reply::Truncated, Reply::Truncated],
            Failed(502, "upstream_error"),
            (2, 0),
        ),
        case(
            "an error inside a 200: never a success, retried as a 5xx",
            "solo",
            vec![Reply::Json(200, json!({"error": {"message": "overloaded", "type": "server_error"}}), vec![]); 2],
            Failed(502, "upstream_error"),
            (2, 0),
        ),
        case(
            "an error inside a 200: the fallback serves",
            "pair",
            vec![Reply::Json(200, json!({"error": {"message": "overloaded", "type": "server_error"}}), vec![]); 2],
            Served("openai:b/img-1"),
            (2, 1),
        ),
        case(
            "b64_json that is not base64: 502, not retried",
            "solo",
            vec![images(json!([{"b64_json": "%%% not base64 %%%"}]))],
            Failed(502, "upstream_error"),
            (1, 0),
        ),
        case(
            "base64 of bytes that are not an image: the fallback serves",
            "pair",
            vec![images(json!([{"b64_json": "aGVsbG8gd29ybGQ="}]))],
            Served("openai:b/img-1"),
            (1, 1),
        ),
        case(
            "a result URL that serves HTML: 502",
            "solo",
            vec![images(json!([{"url": html}]))],
            Failed(502, "upstream_error"),
            (1, 0),
        ),
        case(
            "a body that trickles past the timeout: 504",
            "solo",
            vec![Reply::Trickle { every: Duration::from_millis(100) }],
            Failed(504, "upstream_timeout"),
            (1, 0),
        ),
        case(
            "a body that trickles past the timeout: the fallback serves",
            "pair",
            vec![Reply::Trickle { every: Duration::from_millis(100) }],
            Served("openai:b/img-1"),
            (1, 1),
        ),
        case(
            "DashScope: code and message inside a 200 beside an empty output: an error, retried",
            "dash",
            vec![
                Reply::Json(
                    200,
                    json!({"request_id": "r", "code": "InternalError", "message": "try later", "output": {}}),
                    vec![]
                );
                2
            ],
            Failed(502, "upstream_error"),
            (2, 0),
        ),
        Case {
            name: "DashScope: a FAILED task, then a good one: resubmitted",
            model: "dash",
            replies: Vec::new(),
            polls: vec![dash_failed.clone()],
            expect: Served("dashscope:d/wanx-v1"),
            hits: (2, 0),
        },
        Case {
            name: "DashScope: FAILED tasks past the retries: 502",
            model: "dash",
            replies: Vec::new(),
            polls: vec![dash_failed.clone(), dash_failed],
            expect: Failed(502, "upstream_error"),
            hits: (2, 0),
        },
    ]
}

#[tokio::test]
async fn every_upstream_fault_gets_its_documented_answer_and_one_usage_row() {
    let (a, b, d) = (Fake::start(&key()).await, Fake::start(&key()).await, Fake::start(&key()).await);
    let app = app(&a, &b, &d).await;
    for (done, case) in cases(&a).into_iter().enumerate() {
        let name = case.name;
        let primary = if case.model == "dash" { &d } else { &a };
        let path = if case.model == "dash" { "image-synthesis" } else { "/v1/images/generations" };
        let before = (primary.hits(path).len(), b.hits("/v1/images/generations").len());
        for reply in case.replies {
            primary.push(reply);
        }
        d.state.lock().unwrap().polls.extend(case.polls);
        let size = if case.model == "dash" { "1024x1024" } else { "256x256" };
        let response = app.generate(json!({"model": case.model, "prompt": "a lighthouse", "size": size})).await;
        let rows = ledger(&app).await;
        assert_eq!(rows.len(), done + 1, "{name}: one usage row per request: {rows:?}");
        let (outcome, status, count, tokens, backend) = rows.last().unwrap().clone();
        match case.expect {
            Expect::Served(by) => {
                let body = json_body(response, 200).await;
                assert_eq!(body["data"].as_array().map(Vec::len), Some(1), "{name}");
                assert_eq!((outcome.as_str(), status, count), ("ok", 200, 1), "{name}");
                assert_eq!(backend, by, "{name}: recorded under the target that served");
                if case.model != "dash" {
                    assert_eq!(tokens, 30, "{name}: the provider's usage, once");
                }
            }
            Expect::Failed(code_status, code) => {
                let message = assert_error(response, code_status, None, code).await;
                assert!(!message.is_empty(), "{name}");
                assert_eq!((outcome.as_str(), status, count, tokens), (code, i64::from(code_status), 0, 0), "{name}");
            }
        }
        let after = (primary.hits(path).len() - before.0, b.hits("/v1/images/generations").len() - before.1);
        assert_eq!(after, case.hits, "{name}: requests to the primary and the fallback");
        assert!(primary.state.lock().unwrap().script.is_empty(), "{name}: every scripted answer was used");
    }
}

#[tokio::test]
async fn a_capability_refusal_tries_the_next_target_and_a_refusal_of_the_request_does_not() {
    let (a, b, d) = (Fake::start(&key()).await, Fake::start(&key()).await, Fake::start(&key()).await);
    let app = app(&a, &b, &d).await;
    let refusal = |param: &str, code: &str| {
        Reply::Json(
            400,
            json!({"error": {"message": format!("Invalid value for '{param}'."), "type": "invalid_request_error", "param": param, "code": code}}),
            vec![],
        )
    };
    let request = json!({"model": "pair", "prompt": "a lighthouse", "size": "256x256"});

    for (param, code) in [("size", "invalid_value"), ("quality", "invalid_value"), ("n", "integer_above_max_value")] {
        a.push(refusal(param, code));
        json_body(app.generate(request.clone()).await, 200).await;
    }
    assert_eq!((a.hits("generations").len(), b.hits("generations").len()), (3, 3));
    let rows = ledger(&app).await;
    assert!(rows.iter().all(|r| r.0 == "ok" && r.4 == "openai:b/img-1"), "{rows:?}");

    a.push(refusal("prompt", "invalid_value"));
    let message = assert_error(app.generate(request.clone()).await, 400, Some("prompt"), "invalid_value").await;
    assert!(message.contains("Invalid value for 'prompt'"), "{message}");
    assert_eq!(b.hits("generations").len(), 3, "the request's own fault is not sent elsewhere");

    // With no target left, the capability refusal is the answer, naming its parameter.
    a.push(refusal("size", "invalid_value"));
    assert_error(
        app.generate(json!({"model": "solo", "prompt": "a lighthouse", "size": "256x256"})).await,
        400,
        Some("size"),
        "invalid_value",
    )
    .await;
}

#[tokio::test]
async fn an_easel_node_publishes_its_capabilities_and_a_gateway_uses_them() {
    let node = spawn_app().await;
    let listed = json_body(node.client.get(node.url("/v1/models")).send().await.unwrap(), 200).await;
    let dalle = listed["data"].as_array().unwrap().iter().find(|m| m["id"] == "test-dalle").unwrap().clone();
    assert_eq!(dalle["object"], "model", "the OpenAI fields stay");
    assert_eq!(dalle["capabilities"]["sizes"], json!(["64x64", "112x64"]));
    assert_eq!(dalle["capabilities"]["max_n"], 1);
    assert_eq!(dalle["capabilities"]["operations"], json!(["generate"]));
    let one = json_body(node.client.get(node.url("/v1/models/test-dalle")).send().await.unwrap(), 200).await;
    assert_eq!(one, dalle);

    let providers =
        vec![json!({"id": "node", "kind": "easel", "base_url": format!("{}/v1", node.address), "timeout_secs": 10.0})];
    let models = vec![
        model("remote-dalle", json!([{"provider": "node", "model": "test-dalle"}])),
        model("remote-image", json!([{"provider": "node", "model": "test-image"}])),
    ];
    let gateway = spawn_app_with(
        move |c| {
            c.providers = providers;
            c.models = models;
        },
        Vec::new(),
    )
    .await;
    let remote = json_body(gateway.client.get(gateway.url("/v1/models/remote-dalle")).send().await.unwrap(), 200).await;
    assert_eq!(remote["capabilities"]["sizes"], json!(["64x64", "112x64"]), "the node's sizes, not a borrowed rule");
    assert_eq!(remote["capabilities"]["qualities"], json!(["standard", "hd"]));

    // A size the node makes passes; one it does not is refused by the gateway, before any call.
    let body =
        json_body(gateway.generate(json!({"model": "remote-dalle", "prompt": "p", "size": "112x64"})).await, 200).await;
    assert_eq!(body["size"], "112x64");
    let calls = node.backend("test-dalle").calls.load(std::sync::atomic::Ordering::SeqCst);
    let message = assert_error(
        gateway.generate(json!({"model": "remote-dalle", "prompt": "p", "size": "1536x1024"})).await,
        400,
        Some("size"),
        "invalid_value",
    )
    .await;
    assert!(message.contains("'64x64'") && !message.contains("upstream"), "{message}");
    assert_error(
        gateway.generate(json!({"model": "remote-dalle", "prompt": "p", "n": 2})).await,
        400,
        Some("n"),
        "integer_above_max_value",
    )
    .await;
    assert_eq!(node.backend("test-dalle").calls.load(std::sync::atomic::Ordering::SeqCst), calls);
    let small =
        json_body(gateway.generate(json!({"model": "remote-image", "prompt": "p", "size": "512x512"})).await, 200)
            .await;
    assert_eq!(small["size"], "512x512", "a small size a node makes is not refused by gpt-image-2's rule");
}

#[tokio::test]
async fn a_gateway_starts_without_its_easel_node_and_learns_its_capabilities_when_it_answers() {
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = reserved.local_addr().unwrap();
    drop(reserved);
    let providers = vec![
        json!({"id": "node", "kind": "easel", "base_url": format!("http://{address}/v1"), "timeout_secs": 10.0, "retries": 0}),
    ];
    let models = vec![model("remote", json!([{"provider": "node", "model": "test-dalle"}]))];
    let gateway = spawn_app_with(
        move |c| {
            c.providers = providers;
            c.models = models;
        },
        Vec::new(),
    )
    .await;
    let request = |size: &str| json!({"model": "remote", "prompt": "p", "size": size});
    assert_error(gateway.generate(request("112x64")).await, 502, None, "upstream_error").await;

    // The node comes up on its address: until it has answered, the gateway lets the node check
    // sizes itself; after its first answer, the gateway knows them.
    let node = spawn_app_with(move |c| c.server.bind = address.to_string(), crate::helpers::test_models()).await;
    json_body(gateway.generate(request("112x64")).await, 200).await;
    let remote = json_body(gateway.client.get(gateway.url("/v1/models/remote")).send().await.unwrap(), 200).await;
    assert_eq!(remote["capabilities"]["sizes"], json!(["64x64", "112x64"]));
    let calls = node.backend("test-dalle").calls.load(std::sync::atomic::Ordering::SeqCst);
    let message = assert_error(gateway.generate(request("1536x1024")).await, 400, Some("size"), "invalid_value").await;
    assert!(!message.contains("upstream"), "refused by the gateway itself: {message}");
    assert_eq!(node.backend("test-dalle").calls.load(std::sync::atomic::Ordering::SeqCst), calls);
}

#[tokio::test]
async fn a_gateway_refuses_a_model_its_easel_node_does_not_serve() {
    let node = spawn_app().await;
    let mut config = easel_server::config::Config::default();
    let dir = tempfile::tempdir().unwrap();
    config.storage.data_dir = dir.path().to_path_buf();
    config.server.bind = "127.0.0.1:0".into();
    config.providers = vec![json!({"id": "node", "kind": "easel", "base_url": format!("{}/v1", node.address)})];
    config.models = vec![model("remote", json!([{"provider": "node", "model": "no-such-model"}]))];
    let error = easel_server::startup::Application::build(config).await.err().expect("the gateway refuses to start");
    let text = format!("{error:#}");
    assert!(text.contains("no-such-model") && text.contains("test-dalle"), "{text}");
}
