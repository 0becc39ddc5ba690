//! `tenant` (host-api 0.2): the current call's tenant and the engine facts about it, as typed
//! values.
//!
//! Invariant: it tells only what the host bound to this store — the invocation's own tenant,
//! its merchant's quotas and partner origin, and the calling plugin — never another tenant.

use super::State;
use crate::plugins::bindings::v02::trellis::plugin0_2_0::tenant;

impl tenant::Host for State {
    async fn current(&mut self) -> wasmtime::Result<tenant::Context> {
        let inv = self.invocation.clone();
        let t = &inv.tenant;
        let origin = match (&inv.facts.origin, &self.origin, self.services.outside()) {
            (Some(origin), _, _) => Some(origin.clone()),
            (None, Some(found), _) => found.clone(),
            // The door did not know it (an event delivery): the partner's first domain, looked
            // up once per invocation.
            (None, None, Some(outside)) => {
                let looked_up = async { Ok::<_, ()>(outside.partner_origin(&t.partner_id).await) };
                let found = self
                    .timed("tenant", "current", looked_up)
                    .await?
                    .ok()
                    .flatten();
                self.origin = Some(found.clone());
                found
            }
            (None, None, None) => None,
        };
        Ok(tenant::Context {
            partner_id: t.partner_id.clone(),
            agent_id: t.agent_id.clone(),
            merchant_id: t.merchant_id.clone(),
            store_id: t.store_id.clone(),
            installation_id: t.installation_id.clone(),
            invocation_id: inv.id.clone(),
            locale: t.locale.clone(),
            origin,
            quotas: tenant::Quotas {
                max_members: inv.facts.max_members,
                events_per_day: inv.facts.events_per_day,
            },
            caller: inv.facts.caller.clone(),
        })
    }
}
