//! The one place errors become HTTP responses: a stable `code`, a message safe for the client,
//! and for server errors a generic message with the details sent to the log instead.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::alipay::credentials;
use crate::{auth, db, rbac, secrets, tenancy, themes};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no route for {0}")]
    NotFound(String),
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
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

/// The JSON body of every error: clients branch on `code`, people read `message`, forms
/// highlight `field`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
}

const INTERNAL: (StatusCode, &str) = (StatusCode::INTERNAL_SERVER_ERROR, "internal");

impl ApiError {
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use StatusCode as S;
        match self {
            Self::NotFound(_) | Self::Theme(themes::Error::AssetNotFound) => {
                (S::NOT_FOUND, "not_found")
            }
            Self::PayloadTooLarge { .. } => (S::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::BadBody | Self::BadRequest(_) => (S::BAD_REQUEST, "bad_request"),
            Self::Validation { .. } => (S::UNPROCESSABLE_ENTITY, "validation_failed"),
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
            Self::DbErr(_) | Self::Theme(_) | Self::Internal(_) => INTERNAL,
        }
    }

    /// The request field a validation error is about.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::Validation { field, .. }
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
        A::Unauthenticated => (S::UNAUTHORIZED, "unauthenticated"),
        A::Suspended => (S::FORBIDDEN, "suspended"),
        A::UserNotFound(_) | A::KeyNotFound(_) => (S::NOT_FOUND, "not_found"),
        A::Tenancy(e) => tenancy_status(e),
        A::Rbac(e) => rbac_status(e),
        A::Hash | A::Db(_) => INTERNAL,
    }
}

fn rbac_status(error: &rbac::Error) -> (StatusCode, &'static str) {
    match error {
        rbac::Error::Denied { .. } => (StatusCode::FORBIDDEN, "forbidden"),
        rbac::Error::Tenancy(e) => tenancy_status(e),
        rbac::Error::Casbin(_) | rbac::Error::Db(_) => INTERNAL,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = if status.is_server_error() {
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
    field: Option<&'static str>,
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
