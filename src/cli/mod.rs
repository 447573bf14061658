//! The `capstan` subcommands for people, beside the controller itself: offline rendering, and
//! seeing and steering GitRepositories in the cluster of the current kubeconfig.

mod cluster;
mod render;

pub use cluster::{
    DiffArgs, GetArgs, TargetArgs, WaitArgs, diff, diff_report, get, reconcile, reconcile_request,
    resume, short_revision, suspend,
};
pub use render::{RenderArgs, render, render_tree};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Render(#[from] crate::render::RenderError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("kubeconfig: {0}")]
    Config(String),
    #[error("{0}")]
    Kube(#[from] kube::Error),
    /// The command ran, and what it reports is a failure (a reconcile that did not succeed).
    #[error("{0}")]
    Failed(String),
}

/// How cluster commands print what they found.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Columns for people.
    #[default]
    Table,
    Json,
    Yaml,
}
