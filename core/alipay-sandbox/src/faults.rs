//! Alipay failing on demand, to test what a merchant's system does then (`POST /faults`): the
//! next call of a method for an app is refused with a business error, or carried out with its
//! answer lost — Alipay's `20000` (`isp.unknow-error`, "服务不可用"), after which the caller cannot
//! know whether the trade or refund happened and must ask (Alipay's public error codes; the
//! trade APIs' pages tell a caller to query after it).
//!
//! Invariant: a fault applies to exactly one call, the next of its (app, method), and that
//! call consumes it; a refusal changes nothing, a lost answer changes what the call would have.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::gateway::{GatewayFailure, fail};
use crate::{Error, Sandbox};

const FAULTS: &str = "fault";

/// What the next call of a method gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Refused with `40004` and this `ACQ.*` sub-code; nothing happens.
    Refuse(String),
    /// Carried out, answered `20000`.
    LoseAnswer,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewFault {
    app_id: String,
    method: String,
    /// `refuse` or `lose_answer`.
    answer: String,
    /// For `refuse`: the business sub-code, e.g. `ACQ.BUYER_BALANCE_NOT_ENOUGH`.
    sub_code: Option<String>,
}

fn fault_key(app_id: &str, method: &str) -> String {
    format!("{app_id}:{method}")
}

impl Sandbox {
    /// Arms `fault` for the next call of `method` by `app_id`.
    pub async fn arm_fault(&self, app_id: &str, method: &str, fault: &Fault) -> Result<(), Error> {
        let value = match fault {
            Fault::Refuse(sub_code) => json!({ "refuse": sub_code }),
            Fault::LoseAnswer => json!({ "lose_answer": true }),
        };
        self.store()
            .put(FAULTS, &fault_key(app_id, method), &value)
            .await?;
        Ok(())
    }

    /// The fault armed for this call, consumed.
    async fn take_fault(&self, app_id: &str, method: &str) -> Result<Option<Fault>, Error> {
        let key = fault_key(app_id, method);
        let Some(value) = self.store().get(FAULTS, &key).await? else {
            return Ok(None);
        };
        self.store().delete(FAULTS, &key).await?;
        Ok(Some(match value["refuse"].as_str() {
            Some(sub_code) => Fault::Refuse(sub_code.to_owned()),
            None => Fault::LoseAnswer,
        }))
    }

    /// Runs `call` as the armed fault (if any) says.
    pub(crate) async fn with_fault<F>(
        &self,
        app_id: &str,
        method: &str,
        call: F,
    ) -> Result<Value, GatewayFailure>
    where
        F: Future<Output = Result<Value, GatewayFailure>>,
    {
        match self.take_fault(app_id, method).await {
            Ok(Some(Fault::Refuse(sub_code))) => {
                Err(fail("40004", &sub_code, "沙箱按测试要求拒绝了这次调用"))
            }
            Ok(Some(Fault::LoseAnswer)) => {
                let _ = call.await;
                Err(fail("20000", "isp.unknow-error", "系统繁忙"))
            }
            Ok(None) => call.await,
            Err(_) => Err(fail("20000", "isp.unknow-error", "系统繁忙")),
        }
    }
}

pub(crate) async fn arm(State(sandbox): State<Sandbox>, Json(body): Json<NewFault>) -> Response {
    let invalid = |message: &str| {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "code": "invalid", "message": message })),
        )
            .into_response()
    };
    if !body.method.starts_with("alipay.") || body.method.len() > 100 || body.app_id.len() > 32 {
        return invalid("method must be an Alipay method name and app_id an app id");
    }
    let fault = match (body.answer.as_str(), body.sub_code) {
        ("lose_answer", None) => Fault::LoseAnswer,
        ("refuse", Some(sub_code))
            if sub_code.starts_with("ACQ.")
                && sub_code.len() <= 64
                && sub_code[4..]
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c == '_') =>
        {
            Fault::Refuse(sub_code)
        }
        _ => {
            return invalid(
                "answer is lose_answer, or refuse with a sub_code such as ACQ.BUYER_BALANCE_NOT_ENOUGH",
            );
        }
    };
    match sandbox.arm_fault(&body.app_id, &body.method, &fault).await {
        Ok(()) => Json(json!({ "armed": body.method })).into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}
