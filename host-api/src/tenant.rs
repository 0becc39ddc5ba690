pub use crate::bindings::trellis::plugin0_2_0::tenant::{Context, Quotas};

/// The current call's context.
pub fn current() -> Context {
    crate::host::tenant::current()
}
