//! `plugins` (host-api 0.2): a route of another plugin of the partner, for the invocation's
//! merchant, through the engine's plugin door (`doors::outside`).
//!
//! Invariant: a call is counted, refused unless `[[capabilities.calls]]` is declared and
//! granted, bounded by the caller's deadline, and ends the caller's right to run again: the
//! callee committed on its own, so running the caller again would call it again.

use super::{State, denied};
use crate::plugins::HttpRequest;
use crate::plugins::admission::Turn;
use crate::plugins::bindings::trellis::plugin::types;
use crate::plugins::bindings::v02::trellis::plugin0_2_0::plugins;

/// Calls to other plugins one invocation may make; one more traps it.
const MAX_PLUGIN_CALLS: u32 = 20;

impl State {
    /// Counts a call that leaves the invocation (another plugin, a payment): it may not be
    /// made twice, so the invocation will not run again, and it gives up the namespace's turn,
    /// which it would otherwise hold while it waits.
    pub(super) fn going_out(&mut self) {
        self.went_out = true;
        if matches!(self.turn, Turn::Held { .. } | Turn::Waiting(_)) {
            self.turn = Turn::GivenUp;
        }
    }
}

impl plugins::Host for State {
    async fn call(
        &mut self,
        plugin: String,
        request: plugins::Request,
    ) -> wasmtime::Result<Result<types::HttpResponse, types::Error>> {
        self.plugin_calls += 1;
        if self.plugin_calls > MAX_PLUGIN_CALLS {
            return Err(self.broke(format!(
                "more than {MAX_PLUGIN_CALLS} plugin calls in one invocation"
            )));
        }
        if self.invocation.manifest.capabilities.calls.is_empty() {
            return Ok(Err(denied(
                "[[capabilities.calls]] is not declared in the manifest".into(),
            )));
        }
        if !self.invocation.grant.calls {
            return Ok(Err(denied(
                "calls to other plugins are not granted to this tenant".into(),
            )));
        }
        let Some(outside) = self.services.outside() else {
            return Ok(Err(types::Error::Unsupported(
                "plugins.call is not available here (the plugin harness runs one plugin)".into(),
            )));
        };
        self.going_out();
        let invocation = self.invocation.clone();
        let request = HttpRequest {
            method: request.method,
            path: request.path,
            query: request.query,
            headers: request
                .headers
                .into_iter()
                .map(|h| (h.name.to_ascii_lowercase(), h.value))
                .collect(),
            body: request.body,
        };
        let deadline = self.deadline;
        let answered = self
            .timed(
                "plugins",
                "call",
                outside.call_plugin(&invocation, &plugin, request, deadline),
            )
            .await?;
        Ok(answered
            .map(|response| types::HttpResponse {
                status: response.status,
                headers: response
                    .headers
                    .into_iter()
                    .map(|(name, value)| types::Header { name, value })
                    .collect(),
                body: response.body,
            })
            .map_err(types::Error::from))
    }
}
