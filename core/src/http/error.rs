//! The one place errors become HTTP responses: a stable `code`, a message safe for the client,
//! and for server errors a generic message with the details sent to the log instead.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::{db, themes};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no route for {0}")]
    NotFound(String),
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body could not be read")]
    BadBody,
    #[error("database unavailable")]
    Db(#[from] db::Error),
    #[error("asset not found")]
    Theme(#[from] themes::Error),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

/// The JSON body of every error: clients branch on `code`, people read `message`.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorBody {
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::NotFound(_) | Self::Theme(themes::Error::AssetNotFound) => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            Self::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::BadBody => (StatusCode::BAD_REQUEST, "bad_body"),
            Self::Db(_) => (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable"),
            Self::Theme(_) | Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = if status.is_server_error() {
            tracing::error!(error = ?self, "request failed");
            match status {
                StatusCode::SERVICE_UNAVAILABLE => "service temporarily unavailable".to_owned(),
                _ => "internal error".to_owned(),
            }
        } else {
            self.to_string()
        };
        error_response(status, code, message)
    }
}

/// A JSON error response carrying its [`ErrorBody`] as an extension, so the browser-facing
/// layer can turn it into a themed page without parsing the body again.
pub fn error_response(status: StatusCode, code: &'static str, message: String) -> Response {
    let body = ErrorBody { code, message };
    let mut response = (status, Json(body.clone())).into_response();
    response.extensions_mut().insert(body);
    response
}
