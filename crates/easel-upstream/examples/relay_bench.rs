//! Relay micro-benchmark: the CPU per request of the relay path alone (no HTTP server, no
//! ledger), for profiling what this crate and the core add. The end-to-end benchmark, against
//! LiteLLM and nginx, is `bench/relay/run.sh`.
//!
//! `relay_bench run BASE_URL small|big REQUESTS CONCURRENCY` drives requests through
//! `ImageService::prepare` and `run` (model lookup, validation, the upstream backend with its
//! pooled HTTP client, the base64 check, the core's pass-through check) against an instant
//! OpenAI-compatible upstream at `BASE_URL` answering with a 32x32 (`small`) or 1024x1024 (`big`)
//! PNG, such as nginx serving `bench/relay`'s canned answers (`bench/relay/bench.py fixtures DIR`,
//! `bench/relay/nginx.conf.in`; `BASE_URL` is then `http://127.0.0.1:PORT/big/v1`), and reports
//! the process's CPU time (user + system, from /proc/self/stat) per request.
//! `relay_bench micro ANSWER.json` times the pieces on one answer: JSON parse, base64 decode and
//! encode.

use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use easel_core::fetch::ImageFetcher;
use easel_core::job::JobContext;
use easel_core::registry::{Model, ModelRegistry};
use easel_core::request::ImageRequest;
use easel_core::service::{ImageService, ServiceSettings};
use easel_core::types::{ImageSize, Operation, OutputFormat, ResponseFormat, SizeRequest};
use easel_upstream::Gateway;
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are the 12th and 13th after the command name.
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
    ticks / 100.0
}

async fn bench(base_url: &str, body: &str, requests: usize, concurrency: usize) -> anyhow::Result<()> {
    let size = if body == "small" { ImageSize::new(32, 32) } else { ImageSize::new(1024, 1024) };
    let provider = json!({
        "id": "canned", "kind": "openai", "base_url": base_url, "retries": 0,
        "profile": {"base": "gpt-image", "sizes": [size.to_string()]},
    });
    let gateway = Gateway::from_config(&[provider], None)?;
    let backend =
        gateway.build_model("relay", &json!({"targets": [{"provider": "canned", "model": "gpt-image-1"}]}))?;
    let mut registry = ModelRegistry::new(None);
    registry.insert(Model {
        id: "relay".into(),
        backend,
        created: 0,
        owned_by: "easel".into(),
        defaults: Default::default(),
    })?;
    let fetcher = ImageFetcher::new(Vec::new(), 1 << 20, std::time::Duration::from_secs(5))?;
    let service = Arc::new(ImageService::new(Arc::new(registry), fetcher, ServiceSettings::default()));
    // Load the tokenizer before timing (it loads on first use).
    easel_core::usage::text_tokens("warm up");

    let one = move |service: Arc<ImageService>| async move {
        let mut request = ImageRequest::new(Operation::Generate);
        request.model = Some("relay".into());
        request.prompt = Some("A cute baby sea otter wearing a beret".into());
        request.size = Some(SizeRequest::Exact(size));
        request.options.output_format = OutputFormat::Png;
        request.response_format = Some(ResponseFormat::B64Json);
        let model = service.resolve(request.operation, request.model.as_deref())?;
        let job = service.prepare(request, model).await?;
        let output = service.run(&job, JobContext { cancel: CancellationToken::new(), partials: None }).await?;
        anyhow::Ok(output.images[0].bytes.len())
    };
    // Warm up: connections, allocator, tokenizer.
    for _ in 0..50 {
        one(Arc::clone(&service)).await?;
    }
    let (cpu0, wall0) = (cpu_seconds(), Instant::now());
    let mut tasks = Vec::new();
    let per_task = requests / concurrency;
    for _ in 0..concurrency {
        let service = Arc::clone(&service);
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_task {
                one(Arc::clone(&service)).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let done = per_task * concurrency;
    let (cpu, wall) = (cpu_seconds() - cpu0, wall0.elapsed().as_secs_f64());
    println!(
        "body={body} requests={done} concurrency={concurrency} wall={wall:.2}s rate={:.0}/s cpu={cpu:.2}s cpu_per_request={:.3}ms",
        done as f64 / wall,
        cpu * 1000.0 / done as f64
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("micro") => {
            // Where the time goes for the big body: JSON parse, base64 decode, base64 encode.
            let body = std::fs::read(args.get(2).map_or("big.json", String::as_str))?;
            let rounds = 200;
            let t = Instant::now();
            let mut total = 0;
            for _ in 0..rounds {
                let v: easel_upstream::openai::wire::ImagesResponse<'_> = serde_json::from_slice(&body)?;
                total += v.data.map_or(0, |d| d.len());
            }
            println!("json parse: {:.3} ms", t.elapsed().as_secs_f64() * 1000.0 / f64::from(rounds));
            let v: serde_json::Value = serde_json::from_slice(&body)?;
            let b64 = v["data"][0]["b64_json"].as_str().unwrap_or_default().to_string();
            let t = Instant::now();
            let mut bytes = Vec::new();
            for _ in 0..rounds {
                bytes = STANDARD.decode(&b64)?;
            }
            println!(
                "b64 decode: {:.3} ms ({} bytes)",
                t.elapsed().as_secs_f64() * 1000.0 / f64::from(rounds),
                bytes.len()
            );
            let t = Instant::now();
            for _ in 0..rounds {
                total += STANDARD.encode(&bytes).len();
            }
            println!("b64 encode: {:.3} ms", t.elapsed().as_secs_f64() * 1000.0 / f64::from(rounds));
            let t = Instant::now();
            for _ in 0..rounds {
                bytes = base64_simd::STANDARD.decode_to_vec(b64.as_bytes())?;
            }
            println!("b64 decode (simd): {:.3} ms", t.elapsed().as_secs_f64() * 1000.0 / f64::from(rounds));
            let t = Instant::now();
            for _ in 0..rounds {
                total += base64_simd::STANDARD.encode_to_string(&bytes).len();
            }
            println!("b64 encode (simd): {:.3} ms", t.elapsed().as_secs_f64() * 1000.0 / f64::from(rounds));
            let t = Instant::now();
            for _ in 0..rounds {
                total += json!({"created": 0, "data": [{"b64_json": STANDARD.encode(&bytes)}]}).to_string().len();
            }
            println!(
                "response body (encode + serialise): {:.3} ms",
                t.elapsed().as_secs_f64() * 1000.0 / f64::from(rounds)
            );
            println!("({total})");
            Ok(())
        }
        Some("run") => {
            let url = args.get(2).map_or("http://127.0.0.1:18080/v1", String::as_str);
            let body = args.get(3).map_or("small", String::as_str);
            let requests = args.get(4).and_then(|v| v.parse().ok()).unwrap_or(2000);
            let concurrency = args.get(5).and_then(|v| v.parse().ok()).unwrap_or(4);
            bench(url, body, requests, concurrency).await
        }
        _ => anyhow::bail!(
            "usage: relay_bench run BASE_URL small|big REQUESTS CONCURRENCY | relay_bench micro ANSWER.json"
        ),
    }
}
