//! The backend an upstream model gets: its targets in order, and what happens when one fails.
//!
//! Targets are grouped by rank (by default each its own rank, so the list is a plain fallback
//! order); within a rank the order is drawn at random by weight, which spreads load. For each
//! target in turn: skip it if its circuit is open; otherwise call it under its timeout, retrying
//! with backoff when the failure says so, and move on when it says "fallback". A failure that is
//! the request's own (invalid input, content policy) or a client that left ends the call at once.
//! The model's `Capabilities` are the primary target's, narrowed so that every target can serve
//! a call the core plans (the smallest `max_n_per_call`, masks native only if all honour them).
//!
//! An upstream 400 is one of two things, told apart where the status is read
//! ([`crate::http::status_failure`], [`crate::dashscope::error`]):
//! - a capability the target lacks ([`Next::Skip`]): the provider names a parameter about what it
//!   makes (`size`, `n`, `quality`, `style`, `background`, `output_format`,
//!   `output_compression`, `response_format`, `moderation`, `input_fidelity`, `partial_images`,
//!   `stream`, `mask`, `model`, and the extensions `steps`, `guidance_scale`, `strength`, `seed`,
//!   `negative_prompt`; `parameters.n` and `size[0]` count), or says a parameter is unknown to it
//!   (`unknown_parameter`); DashScope, which names no parameter, an `InvalidParameter` whose
//!   message is about the size, resolution or image count. The next target is tried, and the
//!   target's breaker is not charged: another target may make what this one cannot. With none
//!   left, the provider's 400 (with its `param`) is the answer.
//! - the request's own fault ([`Next::Stop`]): any other parameter (`prompt`, `image`, `user`),
//!   none named, or a content-policy code. Every target would refuse it, and each try may be
//!   billed, so the client gets the 400 at once.
//!
//! The target that served is named in the output (`served_by`, `kind:provider/model`), so usage
//! is recorded under it, not under the primary. When an Easel node that was down at start first
//! answers, its models' capabilities are read and the model's are computed again.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use easel_core::BackendError;
use easel_core::backend::{BackendCall, BackendOutput, CallContext, Capabilities, ImageBackend};
use easel_core::types::Operation;
use rand::Rng;

use crate::config::{ModelOptions, ProviderKind};
use crate::http::{Failure, Next};
use crate::provider::Provider;
use crate::resilience::{Breaker, RetryPolicy, retrying};

/// One provider model speaking one protocol.
#[async_trait]
pub trait Target: Send + Sync + std::fmt::Debug {
    fn provider(&self) -> &Arc<Provider>;
    /// The model name at the provider.
    fn model(&self) -> &str;
    /// What this target could serve on its own.
    fn capabilities(&self) -> &Capabilities;
    /// One attempt, without retries or timeout (the router adds those).
    async fn attempt(&self, call: &BackendCall, cx: &CallContext) -> Result<BackendOutput, Failure>;
}

#[derive(Debug)]
pub struct Slot {
    pub target: Arc<dyn Target>,
    pub rank: u32,
    pub weight: u32,
    pub breaker: Breaker,
    pub policy: RetryPolicy,
}

impl Slot {
    pub fn new(target: Arc<dyn Target>, rank: u32, weight: u32) -> Self {
        let p = Arc::clone(target.provider());
        Self {
            rank,
            weight,
            breaker: Breaker::new(p.circuit_failures, p.circuit_cooldown),
            policy: p.policy.clone(),
            target,
        }
    }

    fn label(&self) -> String {
        format!("{}/{}", self.target.provider().id, self.target.model())
    }
}

#[derive(Debug)]
pub struct UpstreamBackend {
    id: String,
    kind: &'static str,
    caps: Capabilities,
    slots: Vec<Slot>,
    /// The model's table, to recompute `caps` once an Easel node that could not be reached at
    /// start has described its models.
    options: Option<ModelOptions>,
    /// Those recomputed capabilities, which replace `caps`.
    refined: OnceLock<Capabilities>,
}

impl UpstreamBackend {
    /// `slots` must not be empty; `caps` are usually [`merge_capabilities`] with overrides.
    pub fn new(id: String, caps: Capabilities, mut slots: Vec<Slot>) -> Self {
        slots.sort_by_key(|s| s.rank);
        let kind = slots[0].target.provider().kind.as_str();
        Self { id, kind, caps, slots, options: None, refined: OnceLock::new() }
    }

    /// Keeps the model's table so its capabilities can be recomputed when a node answers late.
    pub fn with_options(mut self, options: ModelOptions) -> Self {
        self.options = Some(options);
        self
    }

    /// Easel node providers among the targets whose models are not known yet.
    fn unknown_nodes(&self) -> impl Iterator<Item = &Arc<crate::provider::Provider>> {
        self.slots
            .iter()
            .map(|s| s.target.provider())
            .filter(|p| p.kind == ProviderKind::Easel && p.node_models.get().is_none())
    }

    /// After a node that was down at start has answered a call: reads its models, then computes
    /// the model's capabilities again from what every target now says.
    async fn learn_nodes(&self) {
        let Some(options) = &self.options else { return };
        let providers: Vec<_> = self.unknown_nodes().cloned().collect();
        for p in providers {
            if let Err(e) = crate::node::learn(&p).await {
                tracing::debug!(provider = %p.id, error = format!("{e:#}"), "the Easel node's models could not be read yet");
                return;
            }
        }
        let all: Vec<&Capabilities> = self.slots.iter().map(|s| s.target.capabilities()).collect();
        match crate::gateway::model_capabilities(&self.id, &all, options) {
            Ok(caps) => {
                tracing::info!(model = %self.id, "capabilities now follow what the Easel node says");
                let _ = self.refined.set(caps);
            }
            Err(e) => {
                tracing::warn!(model = %self.id, error = format!("{e:#}"), "the Easel node's capabilities do not fit this model; keeping the ones from start")
            }
        }
    }

    /// The order to try targets in for this call.
    fn order(&self, operation: Operation) -> Vec<&Slot> {
        let mut order = Vec::with_capacity(self.slots.len());
        let mut rng = rand::rng();
        let mut i = 0;
        while i < self.slots.len() {
            let rank = self.slots[i].rank;
            let mut group: Vec<&Slot> = self.slots[i..].iter().take_while(|s| s.rank == rank).collect();
            i += group.len();
            group.retain(|s| s.target.capabilities().supports(operation));
            while !group.is_empty() {
                let total: u64 = group.iter().map(|s| u64::from(s.weight)).sum();
                let pick = if total == 0 {
                    0
                } else {
                    let mut ticket = rng.random_range(0..total);
                    group
                        .iter()
                        .position(|s| {
                            let w = u64::from(s.weight);
                            if ticket < w {
                                true
                            } else {
                                ticket -= w;
                                false
                            }
                        })
                        .unwrap_or(0)
                };
                order.push(group.remove(pick));
            }
        }
        order
    }

    async fn run_slot(&self, slot: &Slot, call: &BackendCall, cx: &CallContext) -> Result<BackendOutput, Failure> {
        let who = slot.target.provider().id.as_str();
        retrying(&slot.policy, &cx.cancel, who, || slot.target.attempt(call, cx)).await
    }
}

#[async_trait]
impl ImageBackend for UpstreamBackend {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn capabilities(&self) -> &Capabilities {
        self.refined.get().unwrap_or(&self.caps)
    }

    async fn readiness(&self) -> Result<(), String> {
        if self.slots.iter().all(|s| s.breaker.is_open()) {
            return Err(format!(
                "model '{}': every upstream target's circuit is open after repeated failures",
                self.id
            ));
        }
        Ok(())
    }

    async fn call(&self, call: BackendCall, cx: CallContext) -> Result<BackendOutput, BackendError> {
        let result = self.route(call, cx).await;
        // A node that was down at start and has now answered (with images or a refusal of the
        // request) is up: learn what it serves. Failures to reach it cost nothing more.
        let answered = matches!(
            &result,
            Ok(_)
                | Err(BackendError::InvalidInput { .. }
                    | BackendError::ContentPolicy { .. }
                    | BackendError::ModerationBlocked { .. })
        );
        if answered && self.refined.get().is_none() && self.unknown_nodes().next().is_some() {
            self.learn_nodes().await;
        }
        result
    }
}

impl UpstreamBackend {
    async fn route(&self, call: BackendCall, cx: CallContext) -> Result<BackendOutput, BackendError> {
        let order = self.order(call.operation);
        let mut last: Option<BackendError> = None;
        for slot in order {
            if cx.cancel.is_cancelled() {
                return Err(BackendError::Cancelled);
            }
            if !slot.breaker.allow() {
                tracing::debug!(target = %slot.label(), "circuit open; skipping");
                last.get_or_insert(BackendError::Unavailable {
                    message: format!("The upstream providers for '{}' are failing; retry later.", self.id),
                    retry_after: Some(slot.breaker_cooldown()),
                });
                continue;
            }
            let result = self.run_slot(slot, &call, &cx).await;
            match &result {
                Ok(_) => slot.breaker.success(),
                Err(f) if matches!(f.next, Next::Stop | Next::Skip) => slot.breaker.neutral(),
                Err(_) => slot.breaker.failure(),
            }
            let circuit = metrics::gauge!("easel_upstream_circuit_open", "provider" => slot.target.provider().id.clone(), "target" => slot.label());
            circuit.set(if slot.breaker.is_open() { 1.0 } else { 0.0 });
            match result {
                Ok(mut output) => {
                    output.served_by = Some(format!("{}:{}", slot.target.provider().kind.as_str(), slot.label()));
                    return Ok(output);
                }
                Err(f) if f.next == Next::Stop => return Err(f.error),
                Err(f) if f.next == Next::Skip => {
                    tracing::info!(model = %self.id, target = %slot.label(), error = %f.error, "upstream target cannot serve this request as asked; trying the next");
                    last = Some(f.error);
                }
                Err(f) => {
                    tracing::warn!(model = %self.id, target = %slot.label(), error = %f.error, "upstream target failed; trying the next");
                    metrics::counter!("easel_upstream_fallbacks_total", "model" => self.id.clone()).increment(1);
                    last = Some(f.error);
                }
            }
        }
        Err(last.unwrap_or_else(|| BackendError::Unavailable {
            message: format!("No upstream target of '{}' serves this operation.", self.id),
            retry_after: None,
        }))
    }
}

impl Slot {
    fn breaker_cooldown(&self) -> std::time::Duration {
        self.target.provider().circuit_cooldown
    }
}

/// The model's capabilities from its targets' (primary first).
pub fn merge_capabilities(targets: &[&Capabilities]) -> Capabilities {
    let mut caps = targets[0].clone();
    let mut edits_seen = caps.supports(Operation::Edit);
    for t in &targets[1..] {
        for op in &t.operations {
            if !caps.operations.contains(op) {
                caps.operations.push(*op);
            }
        }
        caps.max_n_per_call = caps.max_n_per_call.min(t.max_n_per_call);
        caps.native_masks &= t.native_masks;
        caps.transparency &= t.transparency;
        caps.max_prompt_chars = caps.max_prompt_chars.min(t.max_prompt_chars);
        if t.supports(Operation::Edit) {
            caps.max_input_images =
                if edits_seen { caps.max_input_images.min(t.max_input_images) } else { t.max_input_images };
            edits_seen = true;
        }
    }
    caps.max_n_per_call = caps.max_n_per_call.max(1);
    caps
}
