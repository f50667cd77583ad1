//! The command line: `easel serve`, `easel models create-random|list|pull`,
//! `easel keys create|list|revoke`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::startup::Application;
use crate::storage::db;
use crate::storage::keys::ApiKeys;

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
        command: easel_diffusion::cli::ModelsCommand,
    },
    /// Create, list and revoke API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
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
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it (it is shown only once).
    Create {
        #[arg(long)]
        name: String,
        /// Comma-separated model ids the key may use (default: all).
        #[arg(long, value_delimiter = ',')]
        models: Option<Vec<String>>,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key by its id (or the whole key).
    Revoke { id: String },
}

/// Runs a command. Logging starts here, once the config says its format.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if !matches!(cli.command, Command::Serve(_)) {
        crate::telemetry::init(crate::config::LogFormat::Text);
    }
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Models { command } => easel_diffusion::cli::run(command).await,
        Command::Keys { command, config } => keys(command, &config.load()?).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = args.config.load()?;
    if let Some(bind) = args.bind {
        config.server.bind = bind;
    }
    config.server.insecure_no_auth |= args.insecure_no_auth;
    crate::telemetry::init(config.server.log_format);
    if args.check_config {
        config.validate()?;
        crate::backends::check(&config)?;
        println!("configuration OK: {} model(s), listening on {}", config.models.len(), config.server.bind);
        return Ok(());
    }
    Application::build(config).await?.run_until_stopped().await?;
    Ok(())
}

async fn keys(command: KeysCommand, config: &Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.storage.data_dir)?;
    let keys = ApiKeys::new(db::connect(&config.database_url()).await?);
    match command {
        KeysCommand::Create { name, models } => {
            let models =
                models.map(|m| m.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect());
            let key = keys.create(&name, models).await?;
            println!("{}", key.plaintext);
            eprintln!(
                "Created key '{}' (id {}). Store it now: it cannot be shown again.",
                key.record.name, key.record.id
            );
        }
        KeysCommand::List => {
            println!("{:<14} {:<20} {:<8} {:<12} MODELS", "ID", "NAME", "STATUS", "CREATED");
            for key in keys.list().await? {
                let status = if key.revoked_at.is_some() { "revoked" } else { "active" };
                let models = key.models.map_or_else(|| "*".to_string(), |m| m.join(","));
                println!("{:<14} {:<20} {:<8} {:<12} {models}", key.id, key.name, status, key.created_at);
            }
        }
        KeysCommand::Revoke { id } => {
            anyhow::ensure!(keys.revoke(&id).await?, "no active key with id '{id}'");
            println!("revoked {id}");
        }
    }
    Ok(())
}
