//! Capstan: a pull-based GitOps operator for Kubernetes.
#![forbid(unsafe_code)]

pub mod api;
pub mod source;
