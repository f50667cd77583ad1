//! The command line: `easel serve`, `easel models create-random|list|pull`,
//! `easel keys create|update|list|revoke` ([`keys`]), `easel usage` ([`usage`]), and the client
//! commands `easel generate|edit|variations` ([`client`]; `--server` in [`remote`], otherwise
//! [`in_process`]). `models pull` and `serve --model` download from the hub ([`pull`]).

mod client;
mod in_process;
mod keys;
mod pull;
mod remote;
mod usage;

pub use client::{EditArgs, GenerateArgs, VariationsArgs};
pub use keys::KeysCommand;
pub use usage::UsageArgs;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::startup::Application;

#[derive(Debug, Parser)]
#[command(
    name = "easel",
    version,
    about = "An Images API server: OpenAI-compatible, local diffusion and upstream providers."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server (defaults: 127.0.0.1:8080, ./easel-data).
    Serve(ServeArgs),
    /// Make, list and download local models (`create-random`, `list`, `pull`).
    Models {
        #[command(subcommand)]
        command: pull::ModelsCommand,
    },
    /// Make images from a prompt, on a server (--server) or in this process.
    Generate(GenerateArgs),
    /// Edit images with a prompt (and a mask), on a server or in this process.
    Edit(EditArgs),
    /// Make variations of an image, on a server or in this process.
    Variations(VariationsArgs),
    /// Create, update, list and revoke API keys, with their limits.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Print a usage report: requests, images and tokens by model, key or day.
    Usage {
        #[command(flatten)]
        args: UsageArgs,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// A TOML config file.
    #[arg(long, env = "EASEL_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Where the database and hosted images live (overrides storage.data_dir).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
}

impl ConfigArgs {
    /// The config, for commands that only need the database: nothing is built or checked
    /// beyond parsing.
    pub fn load(&self) -> anyhow::Result<Config> {
        let mut config = Config::load(self.config.as_deref())?;
        if let Some(dir) = &self.data_dir {
            config.storage.data_dir = dir.clone();
        }
        Ok(config)
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Address to listen on (overrides server.bind).
    #[arg(long)]
    pub bind: Option<String>,
    /// Serve without API keys even on a non-loopback address.
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// Validate the configuration and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Serve a hub model (e.g. `stabilityai/sd-turbo`) as a local model named after it, pulled
    /// into `<data_dir>/models/` on first use; no config file needed.
    #[arg(long, value_name = "REPO")]
    pub model: Option<String>,
    /// What this node does (overrides server.role): `all` serves the API and runs async tasks,
    /// `api` only serves, `worker` only runs tasks (and serves health and metrics).
    #[arg(long, value_enum)]
    pub role: Option<crate::config::Role>,
}

/// Runs a command. Logging starts here, once the config says its format.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if !matches!(cli.command, Command::Serve(_)) {
        crate::telemetry::init(crate::config::LogFormat::Text);
    }
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Models { command } => pull::run(command).await,
        Command::Generate(args) => client::generate(args).await,
        Command::Edit(args) => client::edit(args).await,
        Command::Variations(args) => client::variations(args).await,
        Command::Keys { command, config } => keys::run(command, &config.load()?).await,
        Command::Usage { args, config } => usage::run(args, &config.load()?).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = args.config.load()?;
    if let Some(bind) = args.bind {
        config.server.bind = bind;
    }
    config.server.insecure_no_auth |= args.insecure_no_auth;
    if let Some(role) = args.role {
        config.server.role = role;
    }
    crate::telemetry::init(config.server.log_format);
    // Request and answer bodies reuse freed heap instead of being faulted in afresh each time.
    easel_core::memory::keep_freed_memory(easel_core::memory::Keep::Bodies);
    if let Some(repo) = &args.model {
        pull::add_hub_model(&mut config, repo).await?;
    }
    if args.check_config {
        config.validate()?;
        crate::backends::check(&config)?;
        println!("configuration OK: {} model(s), listening on {}", config.models.len(), config.server.bind);
        return Ok(());
    }
    Application::build(config).await?.run_until_stopped().await?;
    Ok(())
}
