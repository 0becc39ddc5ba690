//! The `templates` capability: renders one of the plugin's declared templates with the data it
//! passes, wrapped in the partner's theme.
//!
//! Invariant: a render's work is bounded — by the template rules checked at load (no includes,
//! at most two nested loops), the size and node count of its data, the number of renders per
//! invocation and the size of the page — and its time counts as the plugin's CPU.

use std::time::Instant;

use serde_json::Value;

use super::{State, denied};
use crate::plugins::bindings::trellis::plugin::{templates, types};
use crate::themes::Locale;

/// Largest render data, in bytes.
const MAX_RENDER_INPUT: usize = 256 << 10;
/// Most values (JSON nodes) in one render's data.
const MAX_RENDER_NODES: usize = 2_000;
/// Renders one invocation may make; one more traps it.
const MAX_RENDERS: u32 = 8;
/// Largest rendered page, in bytes.
const MAX_RENDER_OUTPUT: usize = 1 << 20;

impl templates::Host for State {
    async fn render(
        &mut self,
        template: String,
        data: String,
    ) -> wasmtime::Result<Result<String, types::Error>> {
        let manifest = &self.invocation.manifest;
        if !manifest.capabilities.templates.contains(&template) {
            return Ok(Err(denied(format!(
                "template {template} is not declared in the manifest"
            ))));
        }
        if !self.invocation.grant.templates {
            return Ok(Err(denied(
                "templates are not granted to this tenant".into(),
            )));
        }
        if data.len() > MAX_RENDER_INPUT {
            return Ok(Err(types::Error::InvalidInput(format!(
                "render data may be at most {MAX_RENDER_INPUT} bytes"
            ))));
        }
        self.renders += 1;
        if self.renders > MAX_RENDERS {
            return Err(self.broke(format!("more than {MAX_RENDERS} renders in one invocation")));
        }
        let started = Instant::now();
        let result = self.render_page(&template, &data);
        self.record("templates", "render", started, result.is_ok());
        Ok(result)
    }
}

impl State {
    fn render_page(&self, template: &str, data: &str) -> Result<String, types::Error> {
        let data: Value = serde_json::from_str(data)
            .map_err(|e| types::Error::InvalidInput(format!("render data is not JSON: {e}")))?;
        // Templates have no includes and at most two nested loops (checked at load), so with
        // this many values a render does at most a few million steps.
        if count_nodes(&data) > MAX_RENDER_NODES {
            return Err(types::Error::InvalidInput(format!(
                "render data may hold at most {MAX_RENDER_NODES} values"
            )));
        }
        let mut out = CappedWriter {
            bytes: Vec::new(),
            cap: MAX_RENDER_OUTPUT,
        };
        self.invocation
            .templates
            .render_to_write(template, &data, &mut out)
            .map_err(|e| types::Error::InvalidInput(format!("template {template}: {e}")))?;
        let body = String::from_utf8(out.bytes)
            .map_err(|_| types::Error::Internal("the rendered page is not UTF-8".into()))?;
        let Some(themes) = &self.services.themes else {
            return Ok(body);
        };
        let locale = if self.invocation.tenant.locale == "en" {
            Locale::En
        } else {
            Locale::ZhCn
        };
        let title = data["title"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| self.invocation.manifest.name.clone());
        themes
            .render_page(
                &self.invocation.theme,
                "plugin",
                locale,
                serde_json::json!({ "title": title, "plugin_body": body }),
            )
            .map_err(|e| self.host_fault("theme", &e))
    }
}

fn count_nodes(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(count_nodes).sum::<usize>(),
        Value::Object(map) => 1 + map.values().map(count_nodes).sum::<usize>(),
        _ => 1,
    }
}

/// Stops a render once its output passes the cap.
struct CappedWriter {
    bytes: Vec<u8>,
    cap: usize,
}

impl std::io::Write for CappedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.cap {
            return Err(std::io::Error::other(format!(
                "the page would exceed {} bytes",
                self.cap
            )));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
