//! The whole permission matrix: every role against every action, over HTTP, on both databases.

use super::*;

fn plural(kind: NodeKind) -> &'static str {
    match kind {
        NodeKind::Platform | NodeKind::Partner => "partners",
        NodeKind::Agent => "agents",
        NodeKind::Merchant => "merchants",
        NodeKind::Store => "stores",
    }
}

/// Performs `action` as `role` against the first chain's node of the action's target kind (or
/// the role's own node), returning the status. Helper accounts and keys are made by the root.
async fn perform(engine: &Engine, tree: &Tree, role: Role, action: Action, serial: usize) -> u16 {
    let api = tree.client(role);
    let own = tree.node_of(role).map(str::to_owned);
    let node_of_kind = |kind: NodeKind| match kind {
        NodeKind::Platform => String::new(),
        kind => tree.chain[kind.depth() - 1].clone(),
    };
    use Action as A;
    match action {
        A::PartnerCreate => {
            api.post(
                "/api/v1/partners",
                json!({"name": format!("New partner {serial}")}),
            )
            .await
            .status
        }
        A::AgentCreate | A::MerchantCreate | A::StoreCreate => {
            let kind = match action {
                A::AgentCreate => NodeKind::Agent,
                A::MerchantCreate => NodeKind::Merchant,
                _ => NodeKind::Store,
            };
            let parent = node_of_kind(kind.parent().unwrap_or(NodeKind::Platform));
            api.post(
                &format!("/api/v1/{}", plural(kind)),
                json!({"parent_id": parent, "name": format!("New {serial}")}),
            )
            .await
            .status
        }
        A::PartnerRead | A::AgentRead | A::MerchantRead | A::StoreRead => {
            let kind = action.target_kind().unwrap_or(NodeKind::Store);
            api.get(&format!("/api/v1/{}/{}", plural(kind), node_of_kind(kind)))
                .await
                .status
        }
        A::PartnerUpdate | A::AgentUpdate | A::MerchantUpdate | A::StoreUpdate => {
            let kind = action.target_kind().unwrap_or(NodeKind::Store);
            let path = format!("/api/v1/{}/{}", plural(kind), node_of_kind(kind));
            api.patch(&path, json!({"name": format!("Renamed {serial}")}))
                .await
                .status
        }
        A::PartnerSuspend | A::AgentSuspend | A::MerchantSuspend | A::StoreSuspend => {
            let kind = action.target_kind().unwrap_or(NodeKind::Store);
            let path = format!("/api/v1/{}/{}", plural(kind), node_of_kind(kind));
            let status = api.post(&format!("{path}/suspend"), json!({})).await.status;
            if status == 200 {
                // Put it back (as root, since suspending your own ancestor locks you out).
                tree.root
                    .post(&format!("{path}/resume"), json!({}))
                    .await
                    .ok();
            }
            status
        }
        A::UserCreate => {
            let body = json!({"node_id": own, "email": format!("new{serial}@one.test"), "password": PASSWORD});
            api.post("/api/v1/users", body).await.status
        }
        A::UserRead | A::UserUpdate => {
            // Accounts are changed from a tier above: the helper stands one tier below the
            // caller, where there is one.
            let below = tree.chain.get(role.kind().depth()).cloned().or(own.clone());
            let body = json!({"node_id": below, "email": format!("helper{serial}@one.test"), "password": PASSWORD});
            let helper = tree.root.post("/api/v1/users", body).await.ok().id();
            if action == A::UserRead {
                api.get(&format!("/api/v1/users/{helper}")).await.status
            } else {
                api.patch(
                    &format!("/api/v1/users/{helper}"),
                    json!({"status": "active"}),
                )
                .await
                .status
            }
        }
        A::ApiKeyCreate => {
            api.post(
                "/api/v1/api-keys",
                json!({"node_id": own, "name": format!("key {serial}")}),
            )
            .await
            .status
        }
        A::ApiKeyRead | A::ApiKeyRevoke => {
            let key = tree
                .root
                .post(
                    "/api/v1/api-keys",
                    json!({"node_id": own, "name": format!("helper {serial}")}),
                )
                .await
                .ok();
            let id = key.body["api_key"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if action == A::ApiKeyRead {
                api.get(&format!("/api/v1/api-keys/{id}")).await.status
            } else {
                api.delete(&format!("/api/v1/api-keys/{id}")).await.status
            }
        }
        A::AlipayCredentialsRead => {
            api.get(&format!(
                "/api/v1/merchants/{}/alipay/credentials",
                tree.chain[2]
            ))
            .await
            .status
        }
        A::AlipayCredentialsWrite => {
            api.post(
                &format!("/api/v1/merchants/{}/alipay/keypair", tree.chain[2]),
                json!({}),
            )
            .await
            .status
        }
        A::AuditRead => {
            let query = own.map(|n| format!("?node_id={n}")).unwrap_or_default();
            api.get(&format!("/api/v1/audit{query}")).await.status
        }
        A::PluginRead => api.get("/api/v1/plugins").await.status,
        A::PluginManage => {
            api.put(
                &format!("/api/v1/partners/{}/plugin-policy", tree.chain[0]),
                json!({"require_signature": false}),
            )
            .await
            .status
        }
        A::PackageRead => api.get("/api/v1/packages").await.status,
        A::PackageWrite => {
            api.post(
                "/api/v1/packages",
                json!({"agent_id": tree.chain[1], "name": format!("Draft {serial}"), "plugins": [], "validity_days": 30}),
            )
            .await
            .status
        }
        A::AssignmentRead => api.get("/api/v1/assignments").await.status,
        A::AssignmentWrite => {
            let fixture = tree.plugins().await;
            api.post(
                &format!("/api/v1/packages/{}/assignments", fixture.package),
                json!({"merchant_ids": [tree.chain[2]]}),
            )
            .await
            .status
        }
        A::PluginConfigRead | A::PluginConfigWrite => {
            tree.plugins().await;
            let path = format!("/api/v1/merchants/{}/plugin-configs/{HELLO}", tree.chain[2]);
            if action == A::PluginConfigRead {
                api.get(&path).await.status
            } else {
                api.put(&path, json!({"greeting": format!("Hi {serial}")}))
                    .await
                    .status
            }
        }
        A::PluginUse => {
            tree.plugins().await;
            api.get(&format!(
                "/api/v1/merchants/{}/plugins/{HELLO}/stats",
                tree.chain[2]
            ))
            .await
            .status
        }
        A::PluginView => {
            tree.plugins().await;
            api.get(&format!(
                "/api/v1/stores/{}/plugins/{HELLO}/stats",
                tree.chain[3]
            ))
            .await
            .status
        }
        A::PluginRouteStaff => {
            tree.plugins().await;
            let store = &tree.chain[3];
            let path = format!("/api/v1/stores/{store}/plugins/{ABUSE}/staff");
            api.get(&path).await.status
        }
        A::PluginRouteMerchant | A::PluginRouteAgent | A::PluginRoutePartner => {
            tree.plugins().await;
            let route = match action {
                A::PluginRouteMerchant => "headers",
                A::PluginRouteAgent => "agent",
                _ => "partner",
            };
            let merchant = &tree.chain[2];
            let path = format!("/api/v1/merchants/{merchant}/plugins/{ABUSE}/{route}");
            api.get(&path).await.status
        }
        A::PaymentRead => {
            api.get(&format!("/api/v1/stores/{}/payments", tree.chain[3]))
                .await
                .status
        }
        A::PaymentCreate => {
            tree.wire_alipay(engine).await;
            api.post(
                &format!("/api/v1/stores/{}/payments", tree.chain[3]),
                json!({"scene": "precreate", "amount_fen": 100, "subject": format!("cell {serial}")}),
            )
            .await
            .status
        }
        A::PaymentRefund => {
            tree.wire_alipay(engine).await;
            let paid = tree.paid(engine).await;
            api.post(
                &format!("/api/v1/payments/{paid}/refunds"),
                json!({"amount_fen": 1, "out_request_no": format!("M{serial}")}),
            )
            .await
            .status
        }
        A::DeliveryRead => api.get("/api/v1/deliveries").await.status,
        A::DeliveryRedeliver => {
            let fixture = tree.plugins().await;
            api.post(
                &format!("/api/v1/deliveries/{}/redeliver", fixture.delivery),
                json!({}),
            )
            .await
            .status
        }
    }
}

#[tokio::test]
async fn every_cell_of_the_permission_matrix_holds_over_http() {
    for db in databases().await {
        // The payment actions need a merchant whose Alipay app is the engine's sandbox.
        let engine = Engine::start(
            &db.url(),
            &[
                ("TRELLIS_SANDBOX__ENABLED", "true"),
                ("TRELLIS_SANDBOX__TIME_SCALE", "100000"),
            ],
        );
        let tree = Tree::build(&engine, &db.url()).await;
        let mut serial = 0;
        for role in Role::ALL {
            for action in Action::ALL {
                serial += 1;
                let status = perform(&engine, &tree, role, action, serial).await;
                let target_depth = action
                    .target_kind()
                    .map_or(role.kind().depth(), NodeKind::depth);
                let inside = role.kind().depth() <= target_depth;
                let cell = format!("{} × {} on {}", role.as_str(), action.name(), db.label());
                if allows(role, action) {
                    assert!(
                        (200..300).contains(&status),
                        "{cell}: allowed by the matrix, got {status}"
                    );
                } else if inside {
                    assert_eq!(status, 403, "{cell}: denied inside the subtree must be 403");
                } else {
                    assert!(
                        status == 404 || status == 403,
                        "{cell}: denied above the caller, got {status}"
                    );
                }
            }
        }
        drop(engine);
        db.cleanup().await;
    }
}
