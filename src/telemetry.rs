//! Logging: tracing to stderr, as text for people or JSON for log pipelines.

use tracing_subscriber::EnvFilter;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid log level {0:?}")]
pub struct InvalidLevel(String);

pub fn init(format: LogFormat, level: &str) -> Result<(), InvalidLevel> {
    let filter = EnvFilter::try_new(level).map_err(|_| InvalidLevel(level.to_string()))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(())
}
