//! The crate's entry point for the server: providers by id, built once from config, then used to
//! build each upstream model's backend and to wrap any backend with prompt enhancement.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, bail};
use easel_core::backend::{Capabilities, SharedBackend};
use easel_core::types::ImageSize;
use serde_json::Value;

use crate::config::{EnhancerConfig, ModelOptions, ProviderConfig, ProviderKind, parse, size_rule};
use crate::dashscope::{DashScopeTarget, Protocol};
use crate::enhance::{EnhancedBackend, Enhancer};
use crate::openai::OpenAiTarget;
use crate::profile::Quirks;
use crate::provider::Provider;
use crate::router::{Slot, Target, UpstreamBackend, merge_capabilities};

#[derive(Debug, Default)]
pub struct Gateway {
    providers: HashMap<String, Arc<Provider>>,
    enhancer: Option<Arc<Enhancer>>,
}

impl Gateway {
    /// Builds the providers (`[[providers]]` tables) and the optional `[prompt_enhancer]`. API keys
    /// are read from the environment variables the tables name; a missing one is an error.
    pub fn from_config(providers: &[Value], prompt_enhancer: Option<&Value>) -> anyhow::Result<Gateway> {
        let mut map = HashMap::new();
        for (index, table) in providers.iter().enumerate() {
            let name = table
                .get("id")
                .and_then(Value::as_str)
                .map_or_else(|| format!("#{}", index + 1), |id| format!("'{id}'"));
            let config: ProviderConfig = parse(table, &format!("[[providers]] {name}"))?;
            let id = config.id.clone();
            if config.kind == ProviderKind::Openai {
                // Catch a bad profile at startup, not at the first request.
                Quirks::from_config(config.profile.as_ref(), "openai", "")
                    .with_context(|| format!("provider '{id}': invalid profile"))?;
            }
            let provider = Provider::from_config(config)?;
            if map.insert(id.clone(), Arc::new(provider)).is_some() {
                bail!("provider '{id}' is configured twice");
            }
        }
        let enhancer = match prompt_enhancer {
            None | Some(Value::Null) => None,
            Some(table) => {
                let config: EnhancerConfig = parse(table, "[prompt_enhancer]")?;
                Some(Arc::new(Enhancer::from_config(config)?))
            }
        };
        Ok(Gateway { providers: map, enhancer })
    }

    /// Asks every `kind = "easel"` provider for its models' capabilities (`GET /v1/models`), so
    /// their targets validate requests as the node will. Called once at start, before
    /// [`Gateway::build_model`]. A node that cannot be reached is not fatal (nodes restart, and a
    /// gateway must come up without them): it is logged, and its targets keep the `easel`
    /// profile, which lets every size through for the node to check itself (the node's refusals
    /// of a size or n come back as 400s naming the parameter, which try the next target). The
    /// first answer from the node then has its models read, and the model's capabilities are
    /// recomputed from them (`UpstreamBackend::call`). Model keys (`sizes`, `max_n`, ...)
    /// override what a node says, as for any provider.
    pub async fn discover(&self) {
        for p in self.providers.values().filter(|p| p.kind == ProviderKind::Easel) {
            if let Err(e) = crate::node::learn(p).await {
                tracing::warn!(
                    provider = %p.id,
                    error = format!("{e:#}"),
                    "could not read the Easel node's models at start; its targets leave the checks to the node until it answers"
                );
            }
        }
    }

    /// The backend for a `[[models]]` table with `backend = "upstream"` (`options` is the table
    /// without `id` and `backend`).
    pub fn build_model(&self, id: &str, options: &Value) -> anyhow::Result<SharedBackend> {
        let owner = format!("model '{id}'");
        let options: ModelOptions = parse(options, &owner)?;
        if options.targets.is_empty() {
            bail!("{owner}: 'targets' must name at least one provider model");
        }
        let mut slots = Vec::with_capacity(options.targets.len());
        for (index, t) in options.targets.iter().enumerate() {
            let provider = self.providers.get(&t.provider).cloned().with_context(|| {
                let mut known: Vec<&str> = self.providers.keys().map(String::as_str).collect();
                known.sort_unstable();
                format!(
                    "{owner}: target {} names provider '{}', which is not configured (known: {})",
                    index + 1,
                    t.provider,
                    known.join(", ")
                )
            })?;
            let is_dash = provider.kind == ProviderKind::Dashscope;
            if !is_dash && (t.protocol.is_some() || t.prompt_extend.is_some()) {
                bail!(
                    "{owner}: 'protocol' and 'prompt_extend' apply to DashScope targets only (provider '{}')",
                    t.provider
                );
            }
            if is_dash && t.profile.is_some() {
                bail!("{owner}: 'profile' applies to kind \"openai\" targets only (provider '{}')", t.provider);
            }
            let target: Arc<dyn Target> = match provider.kind {
                ProviderKind::Dashscope => {
                    let protocol =
                        t.protocol.as_deref().map(Protocol::parse).transpose().with_context(|| owner.clone())?;
                    Arc::new(DashScopeTarget::new(
                        provider,
                        t.model.clone(),
                        protocol,
                        t.prompt_extend,
                        t.extra.clone(),
                    ))
                }
                ProviderKind::Openai | ProviderKind::Easel => {
                    let default = if provider.kind == ProviderKind::Easel { "easel" } else { "openai" };
                    let profile = t.profile.as_ref().or(provider.profile.as_ref());
                    let quirks = Quirks::from_config(profile, default, &t.model)
                        .with_context(|| format!("{owner}: target {}", index + 1))?;
                    if quirks.response_format.as_deref() == Some("url") && !provider.downloads {
                        bail!(
                            "{owner}: provider '{}' answers with links (response_format = \"url\"), but its allow_hosts is empty, so no result could be downloaded",
                            provider.id
                        );
                    }
                    if let Some(models) = provider.node_models.get().filter(|m| !m.contains_key(&t.model)) {
                        let mut known: Vec<&str> = models.keys().map(String::as_str).collect();
                        known.sort_unstable();
                        bail!(
                            "{owner}: target {} names model '{}', which the Easel node '{}' does not serve (it serves: {})",
                            index + 1,
                            t.model,
                            provider.id,
                            known.join(", ")
                        );
                    }
                    Arc::new(OpenAiTarget::new(provider, t.model.clone(), quirks, t.extra.clone()))
                }
            };
            slots.push(Slot::new(target, t.rank.unwrap_or(index as u32), t.weight.unwrap_or(1)));
        }
        slots.sort_by_key(|s| s.rank);
        let all: Vec<&Capabilities> = slots.iter().map(|s| s.target.capabilities()).collect();
        let caps = model_capabilities(id, &all, &options)?;
        Ok(Arc::new(UpstreamBackend::new(id.to_string(), caps, slots).with_options(options)))
    }

    /// Whether a model must be wrapped with [`Gateway::enhance`]: its id ends in `-pe`, or its
    /// table says `prompt_enhance = true` (`prompt_enhance = false` turns a `-pe` id off).
    pub fn wants_enhancement(id: &str, options: &Value) -> bool {
        match options.get("prompt_enhance").and_then(Value::as_bool) {
            Some(explicit) => explicit,
            None => id.ends_with("-pe"),
        }
    }

    /// Wraps any backend so prompts are rewritten by the `[prompt_enhancer]` first. `options` is
    /// the model's table; only `prompt_enhance` is read from it, other keys are ignored.
    pub fn enhance(&self, id: &str, inner: SharedBackend, options: &Value) -> anyhow::Result<SharedBackend> {
        let enhancer = self.check_enhancement(id, options)?;
        Ok(Arc::new(EnhancedBackend::new(id.to_string(), inner, enhancer)))
    }

    /// Whether model `id` can be wrapped by the prompt enhancer (its option is a boolean and a
    /// `[prompt_enhancer]` is configured); the enhancer if so.
    pub fn check_enhancement(&self, id: &str, options: &Value) -> anyhow::Result<Arc<Enhancer>> {
        if let Some(v) = options.get("prompt_enhance").filter(|v| !v.is_boolean()) {
            bail!("model '{id}': 'prompt_enhance' must be true or false, got {v}");
        }
        self.enhancer.clone().with_context(|| {
            format!("model '{id}' asks for prompt enhancement (an id ending in -pe or prompt_enhance = true), but no [prompt_enhancer] is configured")
        })
    }

    /// Provider ids, for diagnostics.
    pub fn provider_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.providers.keys().map(String::as_str).collect();
        ids.sort_unstable();
        ids
    }
}

/// A model's capabilities: its targets' (primary first), merged, with the model's overrides.
pub fn model_capabilities(id: &str, targets: &[&Capabilities], options: &ModelOptions) -> anyhow::Result<Capabilities> {
    let owner = format!("model '{id}'");
    let mut caps = merge_capabilities(targets);
    apply_overrides(&mut caps, options).with_context(|| owner.clone())?;
    if caps.operations.is_empty() {
        bail!("{owner}: no target serves generations, edits or variations");
    }
    Ok(caps)
}

fn apply_overrides(caps: &mut Capabilities, o: &ModelOptions) -> anyhow::Result<()> {
    if let Some(v) = &o.sizes {
        caps.sizes = size_rule(v, "sizes")?;
    }
    if let Some(v) = &o.native_sizes {
        caps.native_sizes = Some(size_rule(v, "native_sizes")?);
    }
    if let Some(n) = o.max_n {
        anyhow::ensure!(n >= 1, "'max_n' must be at least 1");
        caps.max_n = n;
    }
    if let Some(n) = o.max_n_per_call {
        anyhow::ensure!(n >= 1, "'max_n_per_call' must be at least 1");
        caps.max_n_per_call = n;
    }
    if let Some(n) = o.max_input_images {
        caps.max_input_images = n;
    }
    if let Some(n) = o.max_prompt_chars {
        caps.max_prompt_chars = n;
    }
    match &o.default_size {
        Some(text) => {
            let size = ImageSize::parse(text).map_err(anyhow::Error::msg).context("'default_size'")?;
            caps.sizes.check(size).map_err(|e| anyhow::anyhow!("'default_size': {e}"))?;
            caps.default_size = size;
        }
        None if !caps.sizes.allows(caps.default_size) => caps.default_size = caps.sizes.nearest(caps.default_size),
        None => {}
    }
    caps.max_n_per_call = caps.max_n_per_call.min(caps.max_n);
    Ok(())
}
