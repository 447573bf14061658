//! Test support: the shared control plane and git servers, clients, namespaces, repositories.

pub mod env;
pub mod repo;

pub use env::{client, git_server, namespace};
pub use repo::Repo;
