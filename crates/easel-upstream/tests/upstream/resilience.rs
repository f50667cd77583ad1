//! Timeouts, retries, Retry-After, fallback, weights, the circuit breaker, cancellation.

use std::time::{Duration, Instant};

use easel_core::backend::CallContext;
use easel_core::types::Operation;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::*;

fn generation() -> BackendCall {
    call(Operation::Generate, 1, (1024, 1024))
}

fn error_500() -> Reply {
    Reply::Json(500, json!({"error": {"message": "boom", "type": "server_error", "param": null, "code": null}}), vec![])
}

#[tokio::test]
async fn a_429_is_retried_after_its_retry_after() {
    let fake = Fake::start(&api_key()).await;
    let gw = gateway(&[provider("oa", "openai", &fake, json!({}))]);
    let m = model(&gw, json!([{"provider": "oa", "model": "gpt-image-1"}]));
    fake.push(Reply::Json(
        429,
        json!({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}),
        vec![("retry-after", "1".into())],
    ));
    let started = Instant::now();
    run(&m, generation()).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(950), "waited {:?}", started.elapsed());
    assert_eq!(fake.hits("generations").len(), 2);
}

#[tokio::test]
async fn a_429_past_the_retries_is_overloaded_with_retry_after() {
    let fake = Fake::start(&api_key()).await;
    let gw = gateway(&[provider("oa", "openai", &fake, json!({"retries": 1}))]);
    let m = model(&gw, json!([{"provider": "oa", "model": "gpt-image-1"}]));
    for _ in 0..2 {
        fake.push(Reply::Json(429, json!({"error": {"message": "slow down"}}), vec![("retry-after-ms", "20".into())]));
    }
    let err = run(&m, generation()).await.unwrap_err();
    assert!(matches!(err, BackendError::Overloaded { .. }), "{err:?}");
    assert_eq!(fake.hits("generations").len(), 2);
}

#[tokio::test]
async fn a_retry_after_too_long_falls_back_at_once() {
    let a = Fake::start(&api_key()).await;
    let b = Fake::start(&api_key()).await;
    let gw = gateway(&[
        provider("a", "openai", &a, json!({"retry_after_max_secs": 1.0})),
        provider("b", "openai", &b, json!({})),
    ]);
    let m = model(&gw, json!([{"provider": "a", "model": "gpt-image-1"}, {"provider": "b", "model": "gpt-image-1"}]));
    a.push(Reply::Json(429, json!({"error": {"message": "quota"}}), vec![("retry-after", "3600".into())]));
    let started = Instant::now();
    run(&m, generation()).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!((a.hits("generations").len(), b.hits("generations").len()), (1, 1));
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff_then_reported_as_502() {
    let fake = Fake::start(&api_key()).await;
    let gw = gateway(&[provider("oa", "openai", &fake, json!({}))]);
    let m = model(&gw, json!([{"provider": "oa", "model": "gpt-image-1"}]));
    fake.push(error_500());
    fake.push(error_500());
    run(&m, generation()).await.unwrap();
    assert_eq!(fake.hits("generations").len(), 3, "two retries, then success");

    for _ in 0..3 {
        fake.push(error_500());
    }
    let err = run(&m, generation()).await.unwrap_err();
    assert!(matches!(err, BackendError::Upstream { status: Some(500), .. }), "{err:?}");
}

#[tokio::test]
async fn a_truncated_body_is_retried() {
    let fake = Fake::start(&api_key()).await;
    let gw = gateway(&[provider("oa", "openai", &fake, json!({}))]);
    let m = model(&gw, json!([{"provider": "oa", "model": "gpt-image-1"}]));
    fake.push(Reply::Truncated);
    let out = run(&m, generation()).await.unwrap();
    assert_eq!(out.images.len(), 1);
    assert_eq!(fake.hits("generations").len(), 2);

    for _ in 0..3 {
        fake.push(Reply::Truncated);
    }
    let err = run(&m, generation()).await.unwrap_err();
    assert!(matches!(err, BackendError::Upstream { .. }), "{err:?}");
}

#[tokio::test]
async fn a_hang_past_the_timeout_is_a_timeout_or_falls_back() {
    let a = Fake::start(&api_key()).await;
    let b = Fake::start(&api_key()).await;
    let gw =
        gateway(&[provider("a", "openai", &a, json!({"timeout_secs": 0.3})), provider("b", "openai", &b, json!({}))]);
    let alone = gw.build_model("alone", &json!({"targets": [{"provider": "a", "model": "gpt-image-1"}]})).unwrap();
    a.push(Reply::Hang);
    let started = Instant::now();
    let err = run(&alone, generation()).await.unwrap_err();
    assert!(matches!(err, BackendError::Timeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "not retried on the same target");

    let m = model(&gw, json!([{"provider": "a", "model": "gpt-image-1"}, {"provider": "b", "model": "gpt-image-1"}]));
    a.push(Reply::Hang);
    run(&m, generation()).await.unwrap();
    assert_eq!(b.hits("generations").len(), 1);
}

#[tokio::test]
async fn bad_credentials_fall_back_but_invalid_requests_do_not() {
    let a = Fake::start(&api_key()).await;
    let b = Fake::start(&api_key()).await;
    let gw = gateway(&[provider("a", "openai", &a, json!({})), provider("b", "openai", &b, json!({}))]);
    let m = model(&gw, json!([{"provider": "a", "model": "gpt-image-1"}, {"provider": "b", "model": "gpt-image-1"}]));
    a.push(Reply::Json(
        401,
        json!({"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}),
        vec![],
    ));
    run(&m, generation()).await.unwrap();
    assert_eq!((a.hits("generations").len(), b.hits("generations").len()), (1, 1));

    a.push(Reply::Json(
        400,
        json!({"error": {"message": "Invalid prompt", "param": "prompt", "code": "invalid_value"}}),
        vec![],
    ));
    let err = run(&m, generation()).await.unwrap_err();
    match err {
        BackendError::InvalidInput { param, message } => {
            assert_eq!(param.as_deref(), Some("prompt"));
            assert!(message.contains("Invalid prompt"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(b.hits("generations").len(), 1, "the fallback was not tried for an invalid request");
}

#[tokio::test]
async fn a_capability_refusal_falls_back_without_charging_the_breaker() {
    let a = Fake::start(&api_key()).await;
    let b = Fake::start(&api_key()).await;
    let gw = gateway(&[
        provider("a", "openai", &a, json!({"retries": 0, "circuit_failures": 1})),
        provider("b", "openai", &b, json!({})),
    ]);
    let m = model(&gw, json!([{"provider": "a", "model": "img-1"}, {"provider": "b", "model": "img-1"}]));
    for _ in 0..3 {
        a.push(Reply::Json(
            400,
            json!({"error": {"message": "Invalid value: '1024x1024'.", "type": "invalid_request_error", "param": "size", "code": "invalid_value"}}),
            vec![],
        ));
        let out = run(&m, generation()).await.unwrap();
        assert_eq!(out.served_by.as_deref(), Some("openai:b/img-1"));
    }
    assert_eq!(a.hits("generations").len(), 3, "the circuit stays closed: the target is not failing");
    let out = run(&m, generation()).await.unwrap();
    assert_eq!(out.served_by.as_deref(), Some("openai:a/img-1"));
}

#[tokio::test]
async fn the_circuit_opens_after_repeated_failures() {
    let a = Fake::start(&api_key()).await;
    let b = Fake::start(&api_key()).await;
    let gw = gateway(&[
        provider("a", "openai", &a, json!({"retries": 0, "circuit_failures": 2})),
        provider("b", "openai", &b, json!({})),
    ]);
    let m = model(&gw, json!([{"provider": "a", "model": "gpt-image-1"}, {"provider": "b", "model": "gpt-image-1"}]));
    for _ in 0..2 {
        a.push(error_500());
        run(&m, generation()).await.unwrap();
    }
    assert_eq!(a.hits("generations").len(), 2);
    run(&m, generation()).await.unwrap();
    run(&m, generation()).await.unwrap();
    assert_eq!(a.hits("generations").len(), 2, "an open circuit is skipped");
    assert_eq!(b.hits("generations").len(), 4);
    assert!(m.readiness().await.is_ok(), "one target is still closed");

    let alone = gw.build_model("alone", &json!({"targets": [{"provider": "a", "model": "gpt-image-1"}]})).unwrap();
    for _ in 0..2 {
        a.push(error_500());
        let _ = run(&alone, generation()).await;
    }
    let err = run(&alone, generation()).await.unwrap_err();
    assert!(matches!(err, BackendError::Unavailable { retry_after: Some(_), .. }), "{err:?}");
    assert!(alone.readiness().await.is_err());
}

#[tokio::test]
async fn weights_spread_calls_among_equal_ranks() {
    let a = Fake::start(&api_key()).await;
    let b = Fake::start(&api_key()).await;
    let c = Fake::start(&api_key()).await;
    let gw = gateway(&[
        provider("a", "openai", &a, json!({})),
        provider("b", "openai", &b, json!({})),
        provider("c", "openai", &c, json!({})),
    ]);
    let m = model(
        &gw,
        json!([
            {"provider": "a", "model": "gpt-image-1", "rank": 0, "weight": 3},
            {"provider": "b", "model": "gpt-image-1", "rank": 0, "weight": 1},
            {"provider": "c", "model": "gpt-image-1", "rank": 1},
        ]),
    );
    for _ in 0..120 {
        run(&m, generation()).await.unwrap();
    }
    let (na, nb, nc) = (a.hits("generations").len(), b.hits("generations").len(), c.hits("generations").len());
    assert_eq!(na + nb, 120);
    assert_eq!(nc, 0, "a lower rank is only a fallback");
    assert!(na > nb * 3 / 2 && nb > 5, "weights 3:1 gave {na}:{nb}");
}

#[tokio::test]
async fn a_client_that_leaves_cancels_the_call() {
    let fake = Fake::start(&api_key()).await;
    let gw = gateway(&[provider("oa", "openai", &fake, json!({"timeout_secs": 30.0}))]);
    let m = model(&gw, json!([{"provider": "oa", "model": "gpt-image-1"}]));
    fake.push(Reply::Hang);
    let cancel = CancellationToken::new();
    let later = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        later.cancel();
    });
    let started = Instant::now();
    let err = m.call(generation(), CallContext::new(cancel)).await.unwrap_err();
    assert!(matches!(err, BackendError::Cancelled), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_connection_refused_is_retried_then_falls_back() {
    let b = Fake::start(&api_key()).await;
    // A port nobody listens on: bind, note it, close.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let dead_table = json!({
        "id": "dead", "kind": "openai", "base_url": format!("http://127.0.0.1:{port}/v1"),
        "retries": 1, "backoff_base_secs": 0.01, "timeout_secs": 2.0,
    });
    let gw = gateway(&[dead_table, provider("b", "openai", &b, json!({}))]);
    let m =
        model(&gw, json!([{"provider": "dead", "model": "gpt-image-1"}, {"provider": "b", "model": "gpt-image-1"}]));
    run(&m, generation()).await.unwrap();
    assert_eq!(b.hits("generations").len(), 1);
}

#[tokio::test]
async fn a_body_past_max_response_bytes_fails_cleanly_and_is_not_retried() {
    let fake = Fake::start(&api_key()).await;
    // The timeout is far away: only the cap can end these calls quickly.
    let table = provider("oa", "openai", &fake, json!({"max_response_bytes": 1 << 20, "timeout_secs": 30.0}));
    let gw = gateway(&[table]);
    let m = model(&gw, json!([{"provider": "oa", "model": "gpt-image-1"}]));
    let started = Instant::now();
    fake.push(Reply::Endless { sse: false });
    let err = run(&m, generation()).await.unwrap_err();
    assert!(matches!(err, BackendError::Upstream { .. }), "{err:?}");
    assert!(err.to_string().contains("larger than 1048576 bytes"), "{err}");
    assert_eq!(fake.hits("generations").len(), 1, "an oversized answer is not asked for again");
    // The event stream is capped as a whole too.
    fake.push(Reply::Endless { sse: true });
    let (tx, _rx) = tokio::sync::mpsc::channel(8);
    let mut c = generation();
    c.partial_images = 1;
    let err = m.call(c, CallContext { cancel: CancellationToken::new(), partials: Some(tx) }).await.unwrap_err();
    assert!(err.to_string().contains("max_response_bytes"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}

#[test]
fn max_response_bytes_must_be_positive() {
    let providers = [json!({"id": "p", "kind": "openai", "base_url": "https://x.invalid", "max_response_bytes": 0})];
    let Err(err) = easel_upstream::Gateway::from_config(&providers, None) else { panic!("a zero cap was accepted") };
    assert!(format!("{err:#}").contains("max_response_bytes"), "{err:#}");
}
