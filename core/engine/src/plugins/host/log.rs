//! The `log` capability: the plugin's log lines, kept in the invocation's outcome and written
//! to the engine log under the plugin's, installation's and invocation's names.
//!
//! Invariant: what a plugin logs is bounded (lines, bytes, fields, line length) and cleaned of
//! control characters, so one log line stays one line; beyond the bounds lines are counted as
//! dropped, never trap.

use super::State;
use crate::plugins::LogLine;
use crate::plugins::bindings::trellis::plugin::log;

/// Log lines kept per invocation.
const MAX_LOG_LINES: usize = 64;
/// Bytes of messages and fields kept per invocation.
const MAX_LOG_BYTES: usize = 16 << 10;
/// Longest message kept, in bytes.
const MAX_LOG_LINE: usize = 2 << 10;
/// Fields kept per line.
const MAX_LOG_FIELDS: usize = 16;

fn level_rank(level: log::Level) -> u8 {
    match level {
        log::Level::Trace => 0,
        log::Level::Debug => 1,
        log::Level::Info => 2,
        log::Level::Warn => 3,
        log::Level::Error => 4,
    }
}

fn level_name(level: log::Level) -> &'static str {
    match level {
        log::Level::Trace => "trace",
        log::Level::Debug => "debug",
        log::Level::Info => "info",
        log::Level::Warn => "warn",
        log::Level::Error => "error",
    }
}

/// Truncates to at most `max` bytes and escapes control characters, so one log line stays one
/// line and bounded.
fn clean(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        if out.len() >= max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

impl log::Host for State {
    fn enabled(&mut self, level: log::Level) -> wasmtime::Result<bool> {
        Ok(level_rank(level) >= level_rank(self.min_log_level))
    }

    fn log(
        &mut self,
        level: log::Level,
        message: String,
        fields: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        if level_rank(level) < level_rank(self.min_log_level) {
            return Ok(());
        }
        if self.logs.len() >= MAX_LOG_LINES || self.log_bytes >= MAX_LOG_BYTES {
            self.logs_dropped += 1;
            return Ok(());
        }
        let message = clean(&message, MAX_LOG_LINE);
        let mut fields: Vec<(String, String)> = fields
            .iter()
            .take(MAX_LOG_FIELDS)
            .map(|(k, v)| (clean(k, 64), clean(v, 256)))
            .collect();
        fields.shrink_to_fit();
        let size = message.len() + fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        if self.log_bytes + size > MAX_LOG_BYTES {
            self.logs_dropped += 1;
            return Ok(());
        }
        self.log_bytes += size;
        let inv = &self.invocation;
        let rendered: String = fields.iter().map(|(k, v)| format!(" {k}={v}")).collect();
        match level {
            log::Level::Error => {
                tracing::error!(plugin = %inv.manifest.id, installation = %inv.tenant.installation_id, invocation = %inv.id, "{message}{rendered}")
            }
            log::Level::Warn => {
                tracing::warn!(plugin = %inv.manifest.id, installation = %inv.tenant.installation_id, invocation = %inv.id, "{message}{rendered}")
            }
            log::Level::Info => {
                tracing::info!(plugin = %inv.manifest.id, installation = %inv.tenant.installation_id, invocation = %inv.id, "{message}{rendered}")
            }
            log::Level::Debug | log::Level::Trace => {
                tracing::debug!(plugin = %inv.manifest.id, installation = %inv.tenant.installation_id, invocation = %inv.id, "{message}{rendered}")
            }
        }
        self.logs.push(LogLine {
            level: level_name(level),
            message,
            fields,
        });
        Ok(())
    }
}
