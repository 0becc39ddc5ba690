//! The one place errors become HTTP responses: a stable `code`, a message safe for the client,
//! and for server errors a generic message with the details sent to the log instead.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::alipay::credentials;
use crate::plugins::catalog;
use crate::{auth, db, events, packages, payments, plugins, rbac, secrets, tenancy, themes};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no route for {0}")]
    NotFound(String),
    #[error("this host is not served here")]
    UnknownHost,
    #[error("{0} is not answered for this path (its Allow header lists what is)")]
    MethodNotAllowed(String),
    #[error("too many {0} at once; try again shortly")]
    Busy(&'static str),
    #[error("the request body was not received in time")]
    BodyTimeout,
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body could not be read")]
    BadBody,
    #[error("{field}: {message}")]
    Validation {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    BadRequest(String),
    /// A console form that did not come from this session's own page (another site, or a
    /// page from before a sign-out).
    #[error("{0}")]
    FormRefused(&'static str),
    #[error("database unavailable")]
    Db(#[from] db::Error),
    #[error("database error")]
    DbErr(#[from] sea_orm::DbErr),
    #[error(transparent)]
    Tenancy(#[from] tenancy::Error),
    #[error(transparent)]
    Auth(#[from] auth::Error),
    #[error(transparent)]
    Rbac(#[from] rbac::Error),
    #[error(transparent)]
    Credentials(#[from] credentials::Error),
    #[error("asset not found")]
    Theme(#[from] themes::Error),
    #[error(transparent)]
    Catalog(#[from] catalog::Error),
    #[error(transparent)]
    Packages(#[from] packages::Error),
    #[error(transparent)]
    Events(#[from] events::Error),
    #[error(transparent)]
    Plugin(#[from] plugins::Error),
    #[error(transparent)]
    Payments(#[from] payments::Error),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl From<crate::doors::Error> for ApiError {
    fn from(error: crate::doors::Error) -> Self {
        use crate::doors::Error as E;
        match error {
            E::NoRoute => Self::NotFound(String::new()),
            E::NoApp => Self::Validation {
                field: "app_id",
                message: "the callback names no Alipay app".into(),
            },
            E::NotHttp => Self::Internal(anyhow::anyhow!(
                "a route answered something other than HTTP"
            )),
            // Answered as a redirect by the member door; reaching here is a bug.
            E::ToAlipay(_) => Self::Internal(anyhow::anyhow!(
                "a detour to Alipay was not answered as a redirect"
            )),
            E::Identify(message) => Self::BadRequest(message),
            E::Buyer(e) => e.into(),
            E::Tenancy(e) => e.into(),
            E::Rbac(e) => e.into(),
            E::Credentials(e) => e.into(),
            E::Catalog(e) => e.into(),
            E::Packages(e) => e.into(),
            E::Plugin(e) => e.into(),
        }
    }
}

/// The JSON body of every error: clients branch on `code`, people read `message`, forms
/// highlight `field`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

const INTERNAL: (StatusCode, &str) = (StatusCode::INTERNAL_SERVER_ERROR, "internal");

impl ApiError {
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use StatusCode as S;
        match self {
            Self::NotFound(_) | Self::Theme(themes::Error::AssetNotFound) => {
                (S::NOT_FOUND, "not_found")
            }
            Self::UnknownHost => (S::NOT_FOUND, "unknown_host"),
            Self::MethodNotAllowed(_) => (S::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::Busy(_) => (S::TOO_MANY_REQUESTS, "busy"),
            Self::BodyTimeout => (S::REQUEST_TIMEOUT, "request_timeout"),
            Self::PayloadTooLarge { .. } => (S::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::BadBody | Self::BadRequest(_) => (S::BAD_REQUEST, "bad_request"),
            Self::Validation { .. } => (S::UNPROCESSABLE_ENTITY, "validation_failed"),
            Self::FormRefused(_) => (S::FORBIDDEN, "form_refused"),
            Self::Db(_) => (S::SERVICE_UNAVAILABLE, "database_unavailable"),
            Self::Tenancy(e) => tenancy_status(e),
            Self::Auth(e) => auth_status(e),
            Self::Rbac(e) => rbac_status(e),
            Self::Credentials(credentials::Error::Invalid { .. }) => {
                (S::UNPROCESSABLE_ENTITY, "validation_failed")
            }
            Self::Credentials(credentials::Error::NotConfigured) => {
                (S::NOT_FOUND, "not_configured")
            }
            Self::Credentials(credentials::Error::Secrets(secrets::Error::NoMasterKey)) => {
                (S::SERVICE_UNAVAILABLE, "secrets_unavailable")
            }
            Self::Credentials(_) => INTERNAL,
            Self::Catalog(e) => catalog_status(e),
            Self::Packages(e) => packages_status(e),
            Self::Events(events::Error::Invalid { .. }) => {
                (S::UNPROCESSABLE_ENTITY, "validation_failed")
            }
            Self::Events(events::Error::NotFound(_)) => (S::NOT_FOUND, "not_found"),
            Self::Events(events::Error::TooDeep { .. }) => {
                (S::UNPROCESSABLE_ENTITY, "event_chain_too_deep")
            }
            Self::Events(events::Error::OverBudget { .. }) => {
                (S::TOO_MANY_REQUESTS, "event_budget_spent")
            }
            Self::Events(events::Error::Db(_)) => INTERNAL,
            Self::Plugin(e) => plugin_status(e),
            Self::Payments(e) => payments_status(e),
            Self::DbErr(_) | Self::Theme(_) | Self::Internal(_) => INTERNAL,
        }
    }

    /// The request field a validation error is about.
    pub fn field(&self) -> Option<String> {
        match self {
            Self::Catalog(
                catalog::Error::Invalid { field, .. } | catalog::Error::ConfigRefused { field, .. },
            ) => return Some(field.clone()),
            Self::Packages(packages::Error::Invalid { field, .. })
            | Self::Events(events::Error::Invalid { field, .. }) => {
                return Some((*field).to_owned());
            }
            // A plugin's own field error: a JSON pointer into what its route was sent.
            Self::Plugin(plugins::Error::Plugin(plugins::PluginError::InvalidField {
                field,
                ..
            })) => return Some(field.clone()),
            _ => {}
        }
        self.static_field().map(str::to_owned)
    }

    fn static_field(&self) -> Option<&'static str> {
        match self {
            Self::Validation { field, .. }
            | Self::Payments(payments::Error::Invalid { field, .. })
            | Self::Tenancy(tenancy::Error::Invalid { field, .. })
            | Self::Auth(auth::Error::Invalid { field, .. })
            | Self::Auth(auth::Error::Tenancy(tenancy::Error::Invalid { field, .. }))
            | Self::Credentials(credentials::Error::Invalid { field, .. }) => Some(field),
            Self::Auth(auth::Error::PasswordTooShort | auth::Error::PasswordTooLong) => {
                Some("password")
            }
            Self::Auth(auth::Error::InvalidEmail(_)) => Some("email"),
            _ => None,
        }
    }

    /// A 404 for a client-supplied id: the caller may not learn whether it exists elsewhere.
    pub fn is_not_found(&self) -> bool {
        self.status_and_code().0 == StatusCode::NOT_FOUND
    }
}

fn tenancy_status(error: &tenancy::Error) -> (StatusCode, &'static str) {
    use tenancy::Error as T;
    match error {
        T::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
        T::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
        T::DomainTaken(_) => (StatusCode::CONFLICT, "domain_taken"),
        T::SuspendedAbove => (StatusCode::FORBIDDEN, "suspended_above"),
        T::NoPlatform | T::Db(_) => INTERNAL,
    }
}

fn auth_status(error: &auth::Error) -> (StatusCode, &'static str) {
    use StatusCode as S;
    use auth::Error as A;
    match error {
        A::PasswordTooShort | A::PasswordTooLong | A::InvalidEmail(_) | A::Invalid { .. } => {
            (S::UNPROCESSABLE_ENTITY, "validation_failed")
        }
        A::EmailTaken(_) => (S::CONFLICT, "email_taken"),
        A::InvalidCredentials => (S::UNAUTHORIZED, "invalid_credentials"),
        A::Throttled { .. } => (S::TOO_MANY_REQUESTS, "too_many_attempts"),
        A::Busy => (S::TOO_MANY_REQUESTS, "busy"),
        A::ApiKeyRefused => (S::FORBIDDEN, "session_required"),
        A::NotAbove => (S::FORBIDDEN, "forbidden"),
        A::Unauthenticated => (S::UNAUTHORIZED, "unauthenticated"),
        A::Suspended => (S::FORBIDDEN, "suspended"),
        A::UserNotFound(_) | A::KeyNotFound(_) => (S::NOT_FOUND, "not_found"),
        A::Tenancy(e) => tenancy_status(e),
        A::Rbac(e) => rbac_status(e),
        A::Hash | A::Db(_) => INTERNAL,
    }
}

fn catalog_status(error: &catalog::Error) -> (StatusCode, &'static str) {
    use StatusCode as S;
    use catalog::Error as C;
    match error {
        C::NotInstalled(_) | C::NoSuchVersion { .. } => (S::NOT_FOUND, "not_found"),
        C::MissingArchive(_) => INTERNAL,
        C::VersionExists { .. } => (S::CONFLICT, "version_exists"),
        C::Untrusted(_) => (S::UNPROCESSABLE_ENTITY, "untrusted_publisher"),
        C::InUse { .. } => (S::CONFLICT, "plugin_in_use"),
        C::NoEarlierVersion(_) => (S::CONFLICT, "no_earlier_version"),
        C::Invalid { .. } => (S::UNPROCESSABLE_ENTITY, "validation_failed"),
        C::ConfigRefused { .. } => (S::UNPROCESSABLE_ENTITY, "config_rejected"),
        C::Hook { source, .. } => match plugin_status(source) {
            (status, _) if status.is_server_error() => (S::BAD_GATEWAY, "plugin_hook_failed"),
            other => other,
        },
        C::Plugin(e) => plugin_status(e),
        C::Packages(e) => packages_status(e),
        C::Events(events::Error::Invalid { .. }) => (S::UNPROCESSABLE_ENTITY, "validation_failed"),
        C::Events(events::Error::TooDeep { .. }) => {
            (S::UNPROCESSABLE_ENTITY, "event_chain_too_deep")
        }
        C::Events(_) | C::Db(_) => INTERNAL,
    }
}

fn packages_status(error: &packages::Error) -> (StatusCode, &'static str) {
    use StatusCode as S;
    use packages::Error as P;
    match error {
        P::NotFound { .. } => (S::NOT_FOUND, "not_found"),
        P::Invalid { .. } => (S::UNPROCESSABLE_ENTITY, "validation_failed"),
        P::Unpublished(_) => (S::CONFLICT, "package_unpublished"),
        P::Expired(_) => (S::FORBIDDEN, "package_expired"),
        P::NotEntitled(_) => (S::FORBIDDEN, "not_entitled"),
        P::Db(_) => INTERNAL,
    }
}

fn plugin_status(error: &plugins::Error) -> (StatusCode, &'static str) {
    use StatusCode as S;
    use plugins::Error as E;
    match error {
        E::Manifest(_)
        | E::HostApi { .. }
        | E::Archive(_)
        | E::BadSignature
        | E::UndeclaredImport { .. }
        | E::UnsupportedImport { .. }
        | E::Compile(_) => (S::UNPROCESSABLE_ENTITY, "invalid_plugin"),
        E::BadInput(_) | E::NotSubscribed(_) => (S::UNPROCESSABLE_ENTITY, "validation_failed"),
        E::NoRoute { .. } => (S::NOT_FOUND, "not_found"),
        E::Plugin(error) => plugin_error_status(error),
        E::Trap { .. } | E::OutputTooLarge { .. } => (S::BAD_GATEWAY, "plugin_failed"),
        E::Timeout { .. } => (S::GATEWAY_TIMEOUT, "plugin_timeout"),
        E::Busy { .. } => (S::SERVICE_UNAVAILABLE, "plugin_busy"),
        E::Suspended { .. } => (S::SERVICE_UNAVAILABLE, "plugin_suspended"),
        E::Conflict { .. } => (S::CONFLICT, "plugin_conflict"),
        E::Cache(_) | E::Engine(_) | E::Commit(_) | E::Abandoned(_) => INTERNAL,
    }
}

/// An error a plugin answered with (not a failure of the plugin): the status its kind means.
fn plugin_error_status(error: &plugins::PluginError) -> (StatusCode, &'static str) {
    use StatusCode as S;
    use plugins::PluginError as P;
    match error {
        // As the contract (WIT `error`) says: malformed input 400, one wrong field 422.
        P::InvalidInput { .. } => (S::BAD_REQUEST, "plugin_invalid_input"),
        P::InvalidField { .. } => (S::UNPROCESSABLE_ENTITY, "plugin_invalid_field"),
        P::NotFound { .. } => (S::NOT_FOUND, "plugin_not_found"),
        P::Denied { .. } => (S::FORBIDDEN, "plugin_denied"),
        P::Conflict { .. } => (S::CONFLICT, "plugin_conflict"),
        P::QuotaExceeded { .. } => (S::TOO_MANY_REQUESTS, "plugin_quota_exceeded"),
        P::Unsupported { .. } => (S::NOT_IMPLEMENTED, "plugin_unsupported"),
        P::Upstream { .. } => (S::BAD_GATEWAY, "plugin_upstream_failed"),
        P::Internal { .. } => (S::BAD_GATEWAY, "plugin_failed"),
    }
}

fn rbac_status(error: &rbac::Error) -> (StatusCode, &'static str) {
    match error {
        rbac::Error::Denied { .. } => (StatusCode::FORBIDDEN, "forbidden"),
        rbac::Error::Tenancy(e) => tenancy_status(e),
        rbac::Error::Casbin(_) | rbac::Error::Db(_) => INTERNAL,
    }
}

fn payments_status(error: &payments::Error) -> (StatusCode, &'static str) {
    use StatusCode as S;
    use payments::Error as E;
    match error {
        E::Invalid { .. } => (S::UNPROCESSABLE_ENTITY, "validation_failed"),
        E::NotFound => (S::NOT_FOUND, "not_found"),
        E::Conflict(_) => (S::CONFLICT, "conflict"),
        E::NoCredentials => (S::CONFLICT, "alipay_not_configured"),
        // Alipay's refusal, with its codes in the message: the merchant can act on it.
        E::Refused(_) => (S::BAD_GATEWAY, "alipay_refused"),
        E::Alipay(_) => (S::BAD_GATEWAY, "alipay_unavailable"),
        E::Tenancy(e) => tenancy_status(e),
        E::Stopping => (S::SERVICE_UNAVAILABLE, "unavailable"),
        E::Credentials(_) | E::Events(_) | E::Catalog(_) | E::Db(_) => INTERNAL,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        // A plugin's own failure (trap, timeout, busy) is about the plugin, not our internals:
        // its message helps the partner and leaks nothing of the engine.
        let message = if status.is_server_error()
            && !code.starts_with("plugin_")
            && !code.starts_with("alipay_")
        {
            tracing::error!(error = ?self, "request failed");
            match status {
                StatusCode::SERVICE_UNAVAILABLE if code == "secrets_unavailable" => {
                    "secrets cannot be stored: the platform has no master key configured".to_owned()
                }
                StatusCode::SERVICE_UNAVAILABLE => "service temporarily unavailable".to_owned(),
                _ => "internal error".to_owned(),
            }
        } else {
            self.to_string()
        };
        let mut response = error_response(status, code, message, self.field());
        if let Self::Auth(auth::Error::Throttled { retry_after }) = &self
            && let Ok(value) = HeaderValue::from_str(&retry_after.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

/// A JSON error response carrying its [`ErrorBody`] as an extension, so the browser-facing
/// layer can turn it into a themed page without parsing the body again.
pub fn error_response(
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
) -> Response {
    let body = ErrorBody {
        code,
        message,
        field,
    };
    let mut response = (status, Json(body.clone())).into_response();
    response.extensions_mut().insert(body);
    response
}
