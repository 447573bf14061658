//! Logging: tracing to stderr, as text for people or JSON for log pipelines. Colour only on a
//! terminal, and never with `NO_COLOR` set (<https://no-color.org>): a log file or a Pod's log
//! carries no escape sequences.

use std::io::IsTerminal;

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
        .with_ansi(colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(())
}

/// Whether text output may be coloured: on a terminal, unless `NO_COLOR` is set and not empty.
pub fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(super::colour(true, None));
        assert!(super::colour(true, Some("".into())));
        assert!(!super::colour(true, Some("1".into())));
        assert!(!super::colour(false, None));
    }
}
