use std::collections::BTreeSet;

use easel_core::types::Operation;
use serde_json::Value;

use super::document;

/// Every `(METHOD, path)` the router in `routes.rs` mounts, read from its source: axum's
/// `Router` does not list its routes, and the file is the one place routes are added.
fn routed() -> BTreeSet<(String, String)> {
    let source = include_str!("../routes.rs");
    let mut found = BTreeSet::new();
    for chunk in source.split(".route(\"").skip(1) {
        let (path, rest) = chunk.split_once('"').expect("a quoted path");
        // The method router runs to the end of the `.route(...)` call.
        let call = rest.split(")\n").next().unwrap_or(rest);
        for method in ["get", "post", "patch", "delete", "put"] {
            let calls = [format!(" {method}("), format!(".{method}(")];
            if calls.iter().any(|c| call.contains(c.as_str())) {
                found.insert((method.to_string(), path.to_string()));
            }
        }
    }
    found
}

fn documented() -> BTreeSet<(String, String)> {
    let value = serde_json::to_value(document()).unwrap();
    let mut found = BTreeSet::new();
    for (path, item) in value["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            found.insert((method.clone(), path.clone()));
        }
    }
    found
}

#[test]
fn every_route_is_documented() {
    let routed = routed();
    assert!(routed.len() > 20, "the route scan found too few routes: {routed:?}");
    let missing: Vec<_> = routed.difference(&documented()).cloned().collect();
    assert!(missing.is_empty(), "routes missing from the OpenAPI document (add them to openapi/paths.rs): {missing:?}");
}

#[test]
fn every_documented_operation_is_routed() {
    let stale: Vec<_> = documented().difference(&routed()).cloned().collect();
    assert!(stale.is_empty(), "the OpenAPI document lists operations no route serves: {stale:?}");
}

#[test]
fn every_operation_answers_errors_in_its_protocols_envelope() {
    let value = serde_json::to_value(document()).unwrap();
    for (path, item) in value["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let schema = &operation["responses"]["default"]["content"]["application/json"]["schema"]["$ref"];
            let expected = if path.starts_with("/api/v1/") {
                "#/components/schemas/DashScopeErrorBody"
            } else {
                "#/components/schemas/ErrorBody"
            };
            assert_eq!(schema, expected, "{method} {path}");
        }
    }
    let schemas = &value["components"]["schemas"];
    assert!(schemas["ErrorBody"].is_object() && schemas["DashScopeErrorBody"].is_object());
}

#[test]
fn the_image_routes_document_every_dialect_and_the_stream() {
    let value = serde_json::to_value(document()).unwrap();
    let edits = &value["paths"]["/v1/images/edits"]["post"];
    let content = edits["requestBody"]["content"].as_object().unwrap();
    assert!(content.contains_key("multipart/form-data") && content.contains_key("application/json"));
    let ok = &value["paths"]["/v1/images/generations"]["post"]["responses"]["200"]["content"];
    assert!(ok["text/event-stream"].is_object() && ok["application/json"].is_object());
    let schemas = value["components"]["schemas"].as_object().unwrap();
    for name in ["QwenRequest", "EditJsonRequest", "EditForm", "VariationForm", "PartialImageEvent", "CompletedEvent"] {
        assert!(schemas.contains_key(name), "{name} is missing");
    }
    let extensions = &schemas["Extensions"]["properties"];
    for field in ["negative_prompt", "seed", "steps", "guidance_scale"] {
        assert!(extensions[field].is_object(), "{field} is missing");
    }
    let quality = &schemas["Quality"]["enum"];
    assert!(quality.to_string().contains("\"hd\""), "the enums carry their wire names: {quality}");
}

/// The names of a request schema's fields, its flattened `allOf` parts included.
fn fields(schemas: &Value, name: &str) -> BTreeSet<String> {
    let schema = &schemas[name];
    let mut parts = vec![schema];
    parts.extend(schema["allOf"].as_array().into_iter().flatten());
    let mut found = BTreeSet::new();
    for part in parts {
        let part = match part["$ref"].as_str() {
            Some(r) => &schemas[r.rsplit('/').next().unwrap()],
            None => part,
        };
        found.extend(part["properties"].as_object().into_iter().flatten().map(|(k, _)| k.clone()));
    }
    found
}

#[test]
fn the_request_schemas_hold_exactly_the_parameters_the_parsers_accept() {
    let value = serde_json::to_value(document()).unwrap();
    let schemas = &value["components"]["schemas"];
    let accepted = |operation, json: bool, parts: &[&str]| -> BTreeSet<String> {
        easel_wire::request::parameter_names(operation, json)
            .into_iter()
            .chain(parts.iter().copied())
            .map(String::from)
            .collect()
    };
    assert_eq!(fields(schemas, "GenerationRequest"), accepted(Operation::Generate, true, &[]));
    assert_eq!(fields(schemas, "EditJsonRequest"), accepted(Operation::Edit, true, &[]));
    assert_eq!(fields(schemas, "EditForm"), accepted(Operation::Edit, false, &["image", "mask"]));
    assert_eq!(fields(schemas, "VariationForm"), accepted(Operation::Variation, false, &["image"]));
}
