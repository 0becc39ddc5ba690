//! A harmless plugin that emits what it subscribes to: ten `storm.tick` for every one.

use trellis_host_api::prelude::*;

struct Storm;

/// What one call emits: the host's limit per call.
const FANOUT: usize = 10;

impl Plugin for Storm {
    fn handle_event(_ctx: &Tenant, _event: &Event) -> Result<()> {
        kv::increment("handled", 1)?;
        for _ in 0..FANOUT {
            // A refusal is kept, not returned: the call succeeds and what was admitted is
            // recorded, as a well-behaved plugin would do.
            if let Err(error) = events::emit("storm.tick", &serde_json::json!({})) {
                kv::increment("refused", 1)?;
                kv::set_json("refusal", &format!("{error:?}"))?;
                break;
            }
        }
        Ok(())
    }
}

export_plugin!(Storm);
