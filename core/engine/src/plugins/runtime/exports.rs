//! Calling a component's exports: the checks on a request before it reaches the guest, the
//! translation between the engine's values and the WIT records, and the size of what came back.
//!
//! Invariant: the guest sees only input it may see — subscribed events, declared routes,
//! payloads within `MAX_INPUT_BYTES` — and an event payload is serialised once, for the check
//! and the call alike.

use wasmtime::Store;

use crate::plugins::bindings::{self, trellis::plugin::types as wit};
use crate::plugins::host::State;
use crate::plugins::manifest::Manifest;
use crate::plugins::{Call, Error, HttpResponse, Output};

/// Largest event payload or HTTP body handed to a plugin.
pub const MAX_INPUT_BYTES: usize = 1 << 20;

/// Refuses input the plugin must never see: unsubscribed events, undeclared routes, oversized
/// payloads.
/// Returns the event payload as text, serialised once for the check and the call.
pub(super) fn check_request(manifest: &Manifest, call: &Call) -> Result<Option<String>, Error> {
    match call {
        Call::Event(event) => {
            if !manifest.subscribe.contains(&event.kind) {
                return Err(Error::NotSubscribed(event.kind.clone()));
            }
            let text = event.payload.to_string();
            if text.len() > MAX_INPUT_BYTES {
                return Err(Error::BadInput(format!(
                    "the event payload is {} bytes; the limit is {MAX_INPUT_BYTES}",
                    text.len()
                )));
            }
            return Ok(Some(text));
        }
        Call::Http(request) => {
            if manifest
                .match_route(&request.method, &request.path)
                .is_none()
            {
                return Err(Error::NoRoute {
                    method: request.method.clone(),
                    path: request.path.clone(),
                });
            }
            if request.body.len() > MAX_INPUT_BYTES {
                return Err(Error::BadInput(format!(
                    "the request body is {} bytes; the limit is {MAX_INPUT_BYTES}",
                    request.body.len()
                )));
            }
        }
        Call::Configure { config } if config.to_string().len() > MAX_INPUT_BYTES => {
            return Err(Error::BadInput("the configuration is too large".into()));
        }
        _ => {}
    }
    Ok(None)
}

pub(super) async fn call_export(
    plugin: &bindings::Plugin,
    store: &mut Store<State>,
    tenant: &wit::Tenant,
    call: Call,
    payload: Option<String>,
) -> wasmtime::Result<Result<Output, wit::Error>> {
    Ok(match call {
        Call::Install { previous_version } => plugin
            .trellis_plugin_lifecycle()
            .call_install(&mut *store, tenant, previous_version.as_deref())
            .await?
            .map(|()| Output::Done),
        Call::Configure { config } => {
            let text = config.to_string();
            match plugin
                .trellis_plugin_lifecycle()
                .call_configure(&mut *store, tenant, &text)
                .await?
            {
                Ok(normalised) => match serde_json::from_str(&normalised) {
                    Ok(value) => Ok(Output::Config(value)),
                    Err(e) => Err(wit::Error::Internal(format!(
                        "configure returned invalid JSON: {e}"
                    ))),
                },
                Err(e) => Err(e),
            }
        }
        Call::Uninstall => plugin
            .trellis_plugin_lifecycle()
            .call_uninstall(&mut *store, tenant)
            .await?
            .map(|()| Output::Done),
        Call::Event(event) => {
            let record = wit::Event {
                id: event.id,
                kind: event.kind,
                occurred_at_ms: u64::try_from(event.occurred_at.timestamp_millis())
                    .unwrap_or_default(),
                payload: payload.unwrap_or_else(|| event.payload.to_string()),
            };
            plugin
                .trellis_plugin_event_handler()
                .call_handle_event(&mut *store, tenant, &record)
                .await?
                .map(|()| Output::Done)
        }
        Call::Http(request) => {
            let manifest = store.data().invocation.manifest.clone();
            let Some((route, params)) = manifest.match_route(&request.method, &request.path) else {
                return Ok(Err(wit::Error::NotFound(request.path)));
            };
            let record = wit::HttpRequest {
                method: request.method,
                path: request.path,
                route: route.path.clone(),
                params,
                query: request.query,
                headers: request
                    .headers
                    .into_iter()
                    .map(|(name, value)| wit::Header { name, value })
                    .collect(),
                body: request.body,
            };
            plugin
                .trellis_plugin_http_handler()
                .call_handle_http(&mut *store, tenant, &record)
                .await?
                .map(|r| {
                    Output::Http(HttpResponse {
                        status: r.status,
                        headers: r.headers.into_iter().map(|h| (h.name, h.value)).collect(),
                        body: r.body,
                    })
                })
        }
    })
}

pub(super) fn output_size(output: &Output) -> usize {
    match output {
        Output::Done => 0,
        Output::Config(value) => value.to_string().len(),
        Output::Http(r) => {
            r.body.len()
                + r.headers
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>()
        }
    }
}
