//! OAuth (alipay.system.oauth.token): the consumer's side — opening a card's claim link,
//! which grants an `auth_code` and lands on the merchant's callback — and the merchant's side,
//! exchanging codes and refresh tokens for access tokens and resolving a token to its user.
//!
//! Invariant: a code is exchanged once, and codes and tokens serve only the app they were
//! granted to.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Value, json};
use uuid::Uuid;

use trellis_alipay::signing::beijing_timestamp;

use crate::consumers::{consumer_profile, identifiers, sandbox_user_id};
use crate::gateway::{GatewayFailure, Outcome, busy, fail, missing};
use crate::{Error, Sandbox, fastish_number};

/// The most of a merchant callback's answer the sandbox hands back to whoever opened the link.
const MAX_CALLBACK_BODY: usize = 64 * 1024;
/// Member-card calls one access token may make: Alipay's member-card FAQ allows two, the form
/// query and the card opening.
const CARD_USES_PER_TOKEN: u64 = 2;

impl Sandbox {
    pub(crate) async fn oauth_token(&self, app_id: &str, p: &BTreeMap<String, String>) -> Outcome {
        let grant_type = p.get("grant_type").ok_or_else(|| missing("grant_type"))?;
        let user_id = match grant_type.as_str() {
            "authorization_code" => {
                let code = p.get("code").ok_or_else(|| missing("code"))?;
                let grant = self.store().get("auth_code", code).await.map_err(busy)?;
                match grant {
                    Some(g) if g["app_id"] == app_id && g["used"] != true => {
                        let mut used = g.clone();
                        used["used"] = json!(true);
                        self.store()
                            .put("auth_code", code, &used)
                            .await
                            .map_err(busy)?;
                        g["user_id"].as_str().unwrap_or_default().to_owned()
                    }
                    _ => return Err(fail("40002", "isv.code-invalid", "授权码code无效")),
                }
            }
            "refresh_token" => {
                let token = p
                    .get("refresh_token")
                    .ok_or_else(|| missing("refresh_token"))?;
                match self.store().get("refresh", token).await.map_err(busy)? {
                    Some(g) if g["app_id"] == app_id => {
                        g["user_id"].as_str().unwrap_or_default().to_owned()
                    }
                    _ => return Err(fail("40002", "isv.refresh-token-invalid", "刷新令牌无效")),
                }
            }
            _ => return Err(fail("40002", "isv.grant-type-invalid", "grant_type 无效")),
        };
        let access = format!("authusrB{}", Uuid::new_v4().simple());
        let refresh = format!("authusrR{}", Uuid::new_v4().simple());
        self.store()
            .put(
                "token",
                &access,
                &json!({ "app_id": app_id, "user_id": user_id }),
            )
            .await
            .map_err(busy)?;
        self.store()
            .put(
                "refresh",
                &refresh,
                &json!({ "app_id": app_id, "user_id": user_id }),
            )
            .await
            .map_err(busy)?;
        // A successful answer has no `code` (the gateway adds none for this method), and the
        // app learns only the identifier its mode gives it.
        let mut answer = identifiers(self.identity_of(app_id).await, app_id, &user_id);
        answer["access_token"] = json!(access);
        answer["refresh_token"] = json!(refresh);
        answer["expires_in"] = json!(1_296_000);
        answer["re_expires_in"] = json!(2_592_000);
        answer["auth_start"] = json!(beijing_timestamp(Utc::now()));
        Ok(answer)
    }

    /// The consumer an `auth_token` was granted for. A member-card call (`card_use`) spends one
    /// of the token's uses; past them the token is refused as Alipay refuses it.
    pub(crate) async fn user_of_token(
        &self,
        app_id: &str,
        p: &BTreeMap<String, String>,
        card_use: bool,
    ) -> Result<Value, GatewayFailure> {
        let token = p
            .get("auth_token")
            .filter(|t| !t.is_empty())
            .ok_or_else(|| missing("auth_token"))?;
        let grant = self.store().get("token", token).await.map_err(busy)?;
        let refused = || fail("20001", "aop.invalid-auth-token", "无效的访问令牌");
        match grant {
            Some(mut g) if g["app_id"] == app_id => {
                if card_use {
                    let used = g["card_uses"].as_u64().unwrap_or(0);
                    if used >= CARD_USES_PER_TOKEN {
                        return Err(refused());
                    }
                    g["card_uses"] = json!(used + 1);
                    self.store().put("token", token, &g).await.map_err(busy)?;
                }
                let user = g["user_id"].as_str().unwrap_or_default().to_owned();
                Ok(self
                    .store()
                    .get("user", &user)
                    .await
                    .map_err(busy)?
                    .unwrap_or_else(|| consumer_profile(&user)))
            }
            _ => Err(refused()),
        }
    }

    /// A fresh `auth_code` for `user_id` at `app_id`, exchanged once by `oauth.token`.
    pub(crate) async fn grant_code(&self, app_id: &str, user_id: &str) -> Result<String, Error> {
        let code = Uuid::new_v4().simple().to_string();
        self.store()
            .put(
                "auth_code",
                &code,
                &json!({ "app_id": app_id, "user_id": user_id }),
            )
            .await?;
        Ok(code)
    }

    /// "User `user` opens the claim link": confirms the form and lands on the merchant's
    /// callback with a fresh `auth_code`, as Alipay's redirect would. Returns the callback's status.
    pub async fn open_claim_link(&self, user: &str, link: &str) -> Result<(u16, String), Error> {
        // As Alipay returns it (encoded), or decoded as merchants show it.
        let decoded = if link.starts_with("http://") || link.starts_with("https://") {
            link.to_owned()
        } else {
            url::form_urlencoded::parse(format!("x={link}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let url =
            url::Url::parse(&decoded).map_err(|_| Error::Invalid("not a claim link".into()))?;
        let q: BTreeMap<String, String> = url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let (Some(app_id), Some(template_id), Some(callback)) =
            (q.get("app_id"), q.get("template_id"), q.get("callback"))
        else {
            return Err(Error::Invalid(
                "the link lacks app_id, template_id or callback".into(),
            ));
        };
        let user_id = sandbox_user_id(user);
        if self.store().get("user", &user_id).await?.is_none() {
            self.store()
                .put("user", &user_id, &consumer_profile(&user_id))
                .await?;
        }
        let code = self.grant_code(app_id, &user_id).await?;
        let request_id = format!("{}", fastish_number());
        // activateform.query must name this request, for this consumer and template.
        self.store()
            .put(
                "claim_request",
                &format!("{app_id}:{request_id}"),
                &json!({ "user_id": user_id, "template_id": template_id }),
            )
            .await?;
        let mut target =
            url::Url::parse(callback).map_err(|_| Error::Invalid("bad callback".into()))?;
        target
            .query_pairs_mut()
            .append_pair("app_id", app_id)
            .append_pair("auth_code", &code)
            .append_pair("scope", "auth_base,auth_user,auth_ecard")
            .append_pair("template_id", template_id)
            .append_pair("request_id", &request_id)
            .append_pair("out_string", q.get("out_string").map_or("", String::as_str));
        let (to, host) = self.target(target.as_str())?;
        let mut request = self.inner.http.get(to);
        if let Some(host) = host {
            request = request.header("host", host);
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| Error::Invalid(e.without_url().to_string()))?;
        let status = response.status().as_u16();
        // What the callback answered is shown to whoever opened the link: a page's worth.
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            body.extend_from_slice(&chunk);
            if body.len() >= MAX_CALLBACK_BODY {
                body.truncate(MAX_CALLBACK_BODY);
                break;
            }
        }
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

#[derive(serde::Deserialize)]
pub(crate) struct ClaimLink {
    url: String,
}

pub(crate) async fn open_claim_link(
    State(sandbox): State<Sandbox>,
    Path(user): Path<String>,
    Json(body): Json<ClaimLink>,
) -> Response {
    match sandbox.open_claim_link(&user, &body.url).await {
        Ok((status, answer)) => {
            Json(json!({ "callback_status": status, "callback_body": answer })).into_response()
        }
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "code": "invalid", "message": e.to_string() })),
        )
            .into_response(),
    }
}
