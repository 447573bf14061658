//! The `capstan` command: the operator and the tools around it.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

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
    /// Print Capstan's CustomResourceDefinitions as YAML.
    Crd {
        /// Write each to its own file in this directory instead of stdout.
        #[arg(long)]
        output_dir: Option<PathBuf>,
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
        Command::Crd { output_dir } => {
            for (file, crd) in capstan::api::crds() {
                let yaml = capstan::api::crd_yaml(&crd)?;
                match &output_dir {
                    Some(dir) => {
                        let path = dir.join(file);
                        std::fs::write(&path, yaml)
                            .with_context(|| format!("writing {}", path.display()))?
                    }
                    None => print!("---\n{yaml}"),
                }
            }
        }
    }
    Ok(())
}
