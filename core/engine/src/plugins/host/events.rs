//! The `events` capability: emitting declared, granted events, which the catalog records in
//! the outbox once the invocation succeeds.
//!
//! Invariant: an emission is paced and charged to its event chain as it is made, when the
//! catalog runs the call under an emitter; without one (a lifecycle hook, `trellis plugin run`)
//! emissions are only collected. Either way at most `MAX_EMITTED` per invocation.

use std::time::Instant;

use serde_json::Value;

use super::{State, bounded, denied};
use crate::plugins::Emitted;
use crate::plugins::bindings::trellis::plugin::{events, types};

/// Events one invocation may emit; one more traps it.
const MAX_EMITTED: usize = 10;
/// Largest event payload a plugin may emit, in bytes.
const MAX_EVENT_BYTES: usize = 64 << 10;

impl events::Host for State {
    async fn emit(
        &mut self,
        kind: String,
        payload: String,
    ) -> wasmtime::Result<Result<(), types::Error>> {
        if !self.invocation.manifest.capabilities.emit.contains(&kind) {
            return Ok(Err(denied(format!(
                "event {kind} is not declared in the manifest"
            ))));
        }
        if !self.invocation.grant.emit.contains(&kind) {
            return Ok(Err(denied(format!(
                "event {kind} is not granted to this tenant"
            ))));
        }
        if self.emitted.len() >= MAX_EMITTED {
            return Err(self.broke(format!(
                "more than {MAX_EMITTED} events emitted in one invocation"
            )));
        }
        if payload.len() > MAX_EVENT_BYTES {
            return Ok(Err(types::Error::InvalidInput(format!(
                "an event payload may be at most {MAX_EVENT_BYTES} bytes"
            ))));
        }
        let payload: Value = match serde_json::from_str(&payload) {
            Ok(v) => v,
            Err(e) => {
                return Ok(Err(types::Error::InvalidInput(format!(
                    "event payload is not JSON: {e}"
                ))));
            }
        };
        // Only what the catalog will record is paced and charged to a chain; without an
        // emitter (a lifecycle hook, `trellis plugin run`) emissions are just collected.
        if let Ok(emitter) = crate::events::EMITTER.try_with(Clone::clone) {
            let started = Instant::now();
            let Some(admitted) = bounded(
                self.deadline,
                crate::events::admit(&self.services.db, &emitter),
            )
            .await
            else {
                return Err(self.deadline_passed());
            };
            self.record("events", "emit", started, matches!(admitted, Ok(Ok(()))));
            match admitted {
                Ok(Ok(())) => {}
                Ok(Err(refusal)) => {
                    return Ok(Err(types::Error::QuotaExceeded(
                        refusal.message().to_owned(),
                    )));
                }
                Err(error) => return Ok(Err(self.host_fault("events", &error))),
            }
        }
        self.emitted.push(Emitted { kind, payload });
        Ok(Ok(()))
    }
}
