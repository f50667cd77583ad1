//! The same cases against every upstream kind (openai, dashscope, easel): a generation of n
//! images comes back as n encoded images, a refusal is a content-policy error, a 500 storm is a
//! 502, and a client that leaves cancels the call.

use std::time::Duration;

use easel_core::backend::CallContext;
use easel_core::types::Operation;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::*;

struct Kind {
    kind: &'static str,
    model: &'static str,
    size: (u32, u32),
    refusal: Value,
}

fn kinds() -> Vec<Kind> {
    let openai_refusal = json!({"error": {"message": "Your request was rejected as a result of our safety system.", "type": "invalid_request_error", "param": null, "code": "content_policy_violation"}});
    vec![
        Kind { kind: "openai", model: "gpt-image-1", size: (1024, 1024), refusal: openai_refusal.clone() },
        Kind { kind: "easel", model: "sd-turbo", size: (1024, 1024), refusal: openai_refusal },
        Kind {
            kind: "dashscope",
            model: "qwen-image-2.0",
            size: (1024, 1024),
            refusal: json!({"request_id": "r", "code": "DataInspectionFailed", "message": "Input data may contain inappropriate content."}),
        },
    ]
}

#[tokio::test]
async fn every_kind_behaves_the_same() {
    for k in kinds() {
        let fake = Fake::start(&api_key()).await;
        let gw = gateway(&[provider("p", k.kind, &fake, json!({"retries": 1}))]);
        let m = model(&gw, json!([{"provider": "p", "model": k.model}]));
        assert_eq!(m.kind(), k.kind);

        let out = run(&m, call(Operation::Generate, 2, k.size)).await.unwrap();
        assert_eq!(sizes(&out), vec![k.size, k.size], "{}", k.kind);

        fake.push(Reply::Json(400, k.refusal.clone(), vec![]));
        let err = run(&m, call(Operation::Generate, 1, k.size)).await.unwrap_err();
        assert!(matches!(err, BackendError::ContentPolicy { .. }), "{}: {err:?}", k.kind);

        for _ in 0..2 {
            fake.push(Reply::Json(
                500,
                json!({"error": {"message": "internal"}, "code": "InternalError", "message": "internal"}),
                vec![],
            ));
        }
        let err = run(&m, call(Operation::Generate, 1, k.size)).await.unwrap_err();
        assert!(matches!(err, BackendError::Upstream { status: Some(500), .. }), "{}: {err:?}", k.kind);

        fake.push(Reply::Hang);
        let cancel = CancellationToken::new();
        let later = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            later.cancel();
        });
        let err = m.call(call(Operation::Generate, 1, k.size), CallContext::new(cancel)).await.unwrap_err();
        assert!(matches!(err, BackendError::Cancelled), "{}: {err:?}", k.kind);
    }
}
