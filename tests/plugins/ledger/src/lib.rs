//! A test plugin: handles `test.tick` idempotently on the event id.

use trellis_host_api::{Event, Plugin, Result, Tenant, export_plugin, kv};

struct Ledger;

impl Plugin for Ledger {
    fn handle_event(_ctx: &Tenant, event: &Event) -> Result<()> {
        kv::increment("handled", 1)?;
        kv::insert_json(&format!("seen/{}", event.id), &())?;
        Ok(())
    }
}

export_plugin!(Ledger);
