//! The harness of Capstan's integration tests and benchmarks (a dev-dependency of both): the
//! shared control plane and git servers, clients, namespaces, repositories,
//! an in-process controller per test (or controller processes with their own identities), and
//! the API server's audit log.

pub mod audit;
pub mod browser;
pub mod controller;
pub mod env;
pub mod gitea;
pub mod hooks;
pub mod process;
pub mod proxy;
pub mod repo;
pub mod tools;

pub use env::{client, git_server, namespace};
pub use repo::Repo;
