//! The `config` capability: the installation's configuration for this tenant, as the
//! `configure` hook normalised it.
//!
//! Invariant: the plugin reads only the configuration bound to its invocation; it cannot ask
//! for another tenant's.

use super::State;
use crate::plugins::bindings::trellis::plugin::config;

impl config::Host for State {
    fn get(&mut self) -> wasmtime::Result<String> {
        Ok(self.invocation.config.clone())
    }
}
