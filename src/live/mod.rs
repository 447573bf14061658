//! The live stage: what the cluster holds of the objects Capstan applied, kept current by shared
//! watches; drift (fields Capstan manages that someone else changed) and health (kstatus).

mod exprs;
pub mod health;
mod wakes;
mod watch;

pub use exprs::HealthExprs;
pub use wakes::Wakes;
pub use watch::{Live, Observed};
