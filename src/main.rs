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
    Controller(capstan::runtime::Config),
    /// Print, offline, the objects the controller would apply for a directory: plain manifests,
    /// a kustomization or a Helm chart, with variables substituted.
    Render(capstan::cli::RenderArgs),
    /// List GitRepositories: Ready, revision, drift, last message.
    Get(capstan::cli::GetArgs),
    /// Ask for a reconcile now and wait until the controller has handled it.
    Reconcile(capstan::cli::WaitArgs),
    /// Stop all changes to the cluster for a GitRepository.
    Suspend(capstan::cli::TargetArgs),
    /// Lift a suspension and wait for the reconcile that follows.
    Resume(capstan::cli::WaitArgs),
    /// Show what applying a GitRepository's manifests would change now (server-side dry run;
    /// Secret values redacted). Exits 1 when something would change.
    Diff(capstan::cli::DiffArgs),
    /// Serve the web UI on a local address, acting as the kubeconfig's user (or, with
    /// `--auth bearer`, as each caller's token).
    Ui(capstan::ui::UiArgs),
    /// Print Capstan's CustomResourceDefinitions as YAML.
    Crd {
        /// Write each to its own file in this directory instead of stdout.
        #[arg(long)]
        output_dir: Option<PathBuf>,
    },
}

fn stdout() -> std::io::StdoutLock<'static> {
    std::io::stdout().lock()
}

/// Prints a command's error as `capstan <command>: <error>` and exits 1.
fn exit_on_error(command: &str, result: Result<(), capstan::cli::CliError>) {
    if let Err(e) = result {
        eprintln!("capstan {command}: {e}");
        std::process::exit(1);
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Controller(config) => {
            capstan::telemetry::init(config.log_format, &config.log_level)?;
            capstan::runtime::run(config).await?;
            // Not a return: leaving the runtime would wait for blocking git or render work
            // still running on its threads, which the drain deadline has given up on.
            std::process::exit(0);
        }
        Command::Render(args) => {
            exit_on_error("render", capstan::cli::render(&args, &mut stdout()))
        }
        Command::Get(args) => exit_on_error("get", capstan::cli::get(&args, &mut stdout()).await),
        Command::Reconcile(args) => exit_on_error(
            "reconcile",
            capstan::cli::reconcile(&args, &mut stdout()).await,
        ),
        Command::Suspend(args) => {
            exit_on_error("suspend", capstan::cli::suspend(&args, &mut stdout()).await)
        }
        Command::Resume(args) => {
            exit_on_error("resume", capstan::cli::resume(&args, &mut stdout()).await)
        }
        Command::Diff(args) => match capstan::cli::diff(&args, &mut stdout()).await {
            Ok(false) => {}
            // As kubectl diff: 1 when something would change, 2 on errors.
            Ok(true) => std::process::exit(1),
            Err(e) => {
                eprintln!("capstan diff: {e}");
                std::process::exit(2);
            }
        },
        Command::Ui(args) => {
            capstan::telemetry::init(capstan::telemetry::LogFormat::Text, &args.log_level)?;
            if let Err(e) = capstan::ui::run(args).await {
                eprintln!("capstan ui: {e}");
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
