//! Sleeps in its event handler, which imports `wasi:clocks/monotonic-clock.subscribe-duration`:
//! a plugin waiting on a timer would hold its place doing nothing, so the call is stopped.

use trellis_host_api::prelude::*;

struct Sleeper;

impl Plugin for Sleeper {
    fn handle_event(_ctx: &Tenant, _event: &Event) -> Result<()> {
        #[allow(clippy::disallowed_methods, reason = "sleeping is the point")]
        std::thread::sleep(std::time::Duration::from_secs(30));
        Ok(())
    }
}

export_plugin!(Sleeper);
