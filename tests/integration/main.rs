//! Integration tests against real components: a local kube-apiserver + etcd and real git servers,
//! started once for this test binary by the scripts in tests/env. Each test works in its own
//! namespace and its own repositories.

use capstan_testkit as support;

mod admission;
mod bad_input;
mod cli;
mod credentials;
mod decrypt;
mod depends;
mod deploy;
mod force;
mod git;
mod health;
mod hostile;
mod inventory;
mod live;
mod monorepo;
mod notify;
mod operations;
mod ownership;
mod preview;
mod remote;
mod render;
mod restart;
mod sync;
mod tenancy;
mod ui;
mod verify;
mod webhook;
