//! The `capstan` command: the operator and the tools around it.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kube::CustomResourceExt;

use capstan::api::GitRepository;

#[derive(Parser)]
#[command(
    name = "capstan",
    version,
    about = "A pull-based GitOps operator for Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator against the cluster of the current kubeconfig or in-cluster config.
    Controller(capstan::controller::Config),
    /// Print, offline, the objects the controller would apply for a directory: plain manifests,
    /// a kustomization or a Helm chart, with variables substituted.
    Render(capstan::cli::RenderArgs),
    /// Print the GitRepository CustomResourceDefinition as YAML.
    Crd {
        /// Write it to this file instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Controller(config) => {
            capstan::telemetry::init(config.log_format, &config.log_level)?;
            capstan::controller::run(config).await?;
        }
        Command::Render(args) => {
            if let Err(e) = capstan::cli::render(&args, &mut std::io::stdout().lock()) {
                eprintln!("capstan render: {e}");
                std::process::exit(1);
            }
        }
        Command::Crd { output } => {
            let yaml = capstan::api::crd_yaml(&GitRepository::crd())?;
            match output {
                Some(path) => std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => print!("{yaml}"),
            }
        }
    }
    Ok(())
}
