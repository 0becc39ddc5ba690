//! The `alipay` capability: Alipay Open Platform calls for the invocation's merchant, signed
//! with that merchant's credentials, which never cross into the guest.
//!
//! Invariant: only declared and granted methods run, only for the bound merchant; the plugin
//! sets no common parameter, sees no authorisation token in an answer, and learns of a failure
//! only what a verified answer said (anything else is logged and named by its kind).

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use super::{State, denied, host_fault};
use crate::alipay::client::{CallOptions, MerchantApp};
use crate::alipay::credentials;
use crate::plugins::admission::Turn;
use crate::plugins::bindings::trellis::plugin::{alipay, types};
use crate::plugins::{Invocation, Services};

/// Alipay calls one invocation may make; one more traps it.
const MAX_ALIPAY_CALLS: u32 = 20;

impl State {
    /// Checks an Alipay method against the manifest and the grant, and counts the call.
    fn alipay_allowed(&mut self, method: &str) -> wasmtime::Result<Result<String, types::Error>> {
        self.alipay_calls += 1;
        // Waiting on Alipay with the namespace's turn would hold up the merchant's other calls.
        if matches!(self.turn, Turn::Held { .. } | Turn::Waiting(_)) {
            self.turn = Turn::GivenUp;
        }
        if self.alipay_calls > MAX_ALIPAY_CALLS {
            return Err(self.broke(format!(
                "more than {MAX_ALIPAY_CALLS} Alipay calls in one invocation"
            )));
        }
        let declared = self
            .invocation
            .manifest
            .capabilities
            .alipay
            .as_ref()
            .is_some_and(|a| a.methods.contains(method));
        if !declared {
            return Ok(Err(denied(format!(
                "Alipay method {method} is not declared in the manifest"
            ))));
        }
        if !self.invocation.grant.alipay_methods.contains(method) {
            return Ok(Err(denied(format!(
                "Alipay method {method} is not granted to this tenant"
            ))));
        }
        match &self.invocation.tenant.merchant_id {
            Some(m) => Ok(Ok(m.clone())),
            None => Ok(Err(denied("Alipay calls need a merchant".into()))),
        }
    }
}

/// What the plugin learns of a failed Alipay call. Only a verified answer's text passes: anything
/// else may come from whatever the gateway URL reached (and a plugin hands errors on to its API
/// callers), so it goes to the log and the plugin gets a fixed message naming the kind.
fn alipay_error(inv: &Invocation, error: crate::alipay::Error) -> types::Error {
    use crate::alipay::Error as A;
    let upstream = |code: &str, sub_code: Option<String>, message: &str| {
        types::Error::Upstream(types::UpstreamError {
            code: code.to_owned(),
            sub_code,
            message: message.to_owned(),
        })
    };
    let logged = |error: &A| {
        tracing::warn!(
            plugin = %inv.manifest.id,
            installation = %inv.tenant.installation_id,
            invocation = %inv.id,
            "alipay call failed: {error}"
        );
    };
    match error {
        A::Gateway(g) => types::Error::Upstream(types::UpstreamError {
            message: g.sub_msg.clone().unwrap_or_else(|| g.msg.clone()),
            code: g.code,
            sub_code: g.sub_code,
        }),
        A::UnsignedError {
            ref code,
            ref sub_code,
            ref msg,
        } => {
            tracing::warn!(
                plugin = %inv.manifest.id,
                invocation = %inv.id,
                code = %code,
                sub_code = sub_code.as_deref().unwrap_or(""),
                msg = %msg,
                "the gateway refused an alipay call without signing its answer"
            );
            // Alipay's codes are what plugins branch on; anything else shaped like them is
            // dropped rather than passed on.
            let code = Some(code.clone())
                .filter(|c| looks_like_a_code(c))
                .unwrap_or_else(|| "unsigned_error".to_owned());
            upstream(
                &code,
                sub_code.clone().filter(|c| looks_like_a_code(c)),
                "the gateway refused the call without a signed answer",
            )
        }
        A::Transport(_) => {
            logged(&error);
            upstream("network", None, "the Alipay gateway could not be reached")
        }
        A::DeadlineExceeded => {
            logged(&error);
            upstream(
                "network",
                None,
                "the Alipay gateway did not answer before the deadline",
            )
        }
        A::GatewayRefused(_) => {
            logged(&error);
            upstream(
                "gateway_not_allowed",
                None,
                "the merchant's Alipay gateway is not allowed on this platform",
            )
        }
        A::ResponseTooLarge { .. } => {
            logged(&error);
            upstream(
                "invalid_response",
                None,
                "the Alipay gateway's answer was larger than the platform accepts",
            )
        }
        A::InvalidSignature
        | A::MalformedResponse(_)
        | A::UntrustedCertificate(_)
        | A::BadCertificate(_) => {
            logged(&error);
            // These texts are the engine's own, never the gateway's.
            upstream("invalid_response", None, &error.to_string())
        }
        A::BadRequest(m) => types::Error::InvalidInput(m),
        other => host_fault(inv, "alipay", &other),
    }
}

/// Alipay's `code` and `sub_code` values: `40004`, `isv.invalid-app-id`, `ACQ.TRADE_NOT_EXIST`.
fn looks_like_a_code(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Removes tokens that belong to the merchant's authorisation from a response before the
/// plugin sees it.
fn scrub(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.remove("app_auth_token");
            map.remove("app_refresh_token");
            map.remove("aes_key");
            map.values_mut().for_each(scrub);
        }
        Value::Array(items) => items.iter_mut().for_each(scrub),
        _ => {}
    }
}

impl alipay::Host for State {
    async fn call(
        &mut self,
        method: String,
        biz_content: String,
        options: alipay::CallOptions,
    ) -> wasmtime::Result<Result<String, types::Error>> {
        let merchant = match self.alipay_allowed(&method)? {
            Ok(m) => m,
            Err(e) => return Ok(Err(e)),
        };
        let call = alipay_call(
            self.services.clone(),
            self.invocation.clone(),
            merchant,
            method,
            biz_content,
            options,
            self.deadline,
        );
        self.timed("alipay", "call", call).await
    }

    async fn upload_image(
        &mut self,
        name: String,
        image_type: String,
        content: Vec<u8>,
    ) -> wasmtime::Result<Result<String, types::Error>> {
        let method = "alipay.offline.material.image.upload";
        let merchant = match self.alipay_allowed(method)? {
            Ok(m) => m,
            Err(e) => return Ok(Err(e)),
        };
        let services = self.services.clone();
        let inv = self.invocation.clone();
        let deadline = self.deadline;
        let upload = async move {
            let app = merchant_app(&services, &inv, &merchant).await?;
            let answer = services
                .alipay
                .upload_image_until(&app, &image_type, &name, content, Some(deadline))
                .await;
            scrubbed(&inv, answer)
        };
        self.timed("alipay", "upload-image", upload).await
    }
}

async fn alipay_call(
    services: Arc<Services>,
    inv: Arc<Invocation>,
    merchant: String,
    method: String,
    biz_content: String,
    options: alipay::CallOptions,
    deadline: Instant,
) -> Result<String, types::Error> {
    let biz: Option<Value> = if biz_content.trim().is_empty() {
        None
    } else {
        Some(
            serde_json::from_str(&biz_content)
                .map_err(|e| types::Error::InvalidInput(format!("biz_content is not JSON: {e}")))?,
        )
    };
    let mut extra = std::collections::BTreeMap::new();
    for (k, v) in options.params {
        // Alipay's common parameters and `biz_content` are the engine's to set.
        if k == "biz_content" || crate::alipay::signing::COMMON_PARAMS.contains(&k.as_str()) {
            return Err(types::Error::InvalidInput(format!(
                "{k} is a common parameter set by the host"
            )));
        }
        extra.insert(k, v);
    }
    let app = merchant_app(&services, &inv, &merchant).await?;
    let call_options = CallOptions {
        notify_url: options.notify_url,
        return_url: options.return_url,
        auth_token: options.auth_token,
        extra,
        deadline: Some(deadline),
        ..CallOptions::default()
    };
    let answer = services
        .alipay
        .call(&app, &method, biz.as_ref(), &call_options)
        .await;
    scrubbed(&inv, answer)
}

/// The merchant's Alipay app, loaded on the host side so its keys never reach the guest.
async fn merchant_app(
    services: &Services,
    inv: &Invocation,
    merchant: &str,
) -> Result<MerchantApp, types::Error> {
    match credentials::load_app(&services.db, &services.vault, merchant).await {
        Ok(app) => Ok(app),
        Err(credentials::Error::NotConfigured) => Err(types::Error::NotFound(
            "this merchant has no Alipay credentials".into(),
        )),
        Err(e) => Err(host_fault(inv, "alipay credentials", &e)),
    }
}

/// What the plugin receives of an Alipay answer: the answer without the merchant's tokens, or
/// the failure as far as it may learn it.
fn scrubbed(
    inv: &Invocation,
    answer: Result<Value, crate::alipay::Error>,
) -> Result<String, types::Error> {
    match answer {
        Ok(mut value) => {
            scrub(&mut value);
            Ok(value.to_string())
        }
        Err(e) => Err(alipay_error(inv, e)),
    }
}
