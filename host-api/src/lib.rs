//! The Trellis plugin contract as seen by plugin authors: the `trellis:plugin` WIT package and
//! the guest SDK built on it.
//!
//! A plugin is a WebAssembly component built for `wasm32-wasip2` that depends on this crate
//! alone. The engine runs it with no ambient authority: storage, Alipay calls, rendering and
//! events are host capabilities granted per merchant.
#![deny(missing_docs)]

/// The version of the `trellis:plugin` WIT package this SDK targets.
pub const HOST_API_VERSION: &str = "0.1.0";
