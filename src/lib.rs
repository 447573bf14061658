//! Capstan: a pull-based GitOps operator for Kubernetes.
#![forbid(unsafe_code)]

pub mod api;
pub mod apply;
pub mod controller;
pub mod render;
pub mod source;
pub mod status;
pub mod telemetry;
