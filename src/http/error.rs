//! The one place errors become HTTP responses.

use crate::engine::EngineError;
use crate::store::StoreError;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Errors a handler can return. The message of a client error is shown to the user; internal
/// errors are logged in full and answered with a generic message.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("a valid console token is required")]
    Unauthorized,
    /// A platform request whose signature does not check out.
    #[error("invalid signature")]
    BadSignature,
    #[error("the request is too large")]
    TooLarge,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        ApiError::Internal(anyhow::Error::new(e))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Internal(anyhow::Error::new(e))
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        use axum::extract::rejection::JsonRejection::*;
        match r {
            BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge,
            MissingJsonContentType(_) => ApiError::BadRequest(
                "the request must be JSON (Content-Type: application/json)".into(),
            ),
            JsonSyntaxError(_) => ApiError::BadRequest("the request is not valid JSON".into()),
            JsonDataError(e) => {
                // serde says what was wrong and where; its words for kinds are Rust's.
                let detail = e.body_text();
                let detail = detail
                    .rsplit_once(": ")
                    .map(|(_, d)| d)
                    .unwrap_or(&detail)
                    .to_owned();
                ApiError::BadRequest(format!(
                    "the request does not have the fields Baton expects: {}",
                    plain_kinds(&detail)
                ))
            }
            other => ApiError::BadRequest(format!(
                "the request could not be read ({})",
                other.status()
            )),
        }
    }
}

/// serde's messages with Rust's type names in words: `expected i64` becomes `expected a
/// whole number`.
fn plain_kinds(text: &str) -> String {
    let words = [
        ("a sequence", "a list"),
        ("struct ", "an object "),
        ("a map", "an object"),
        ("i64", "a whole number"),
        ("i32", "a whole number"),
        ("u64", "a whole number"),
        ("u32", "a whole number"),
        ("u16", "a whole number"),
        ("usize", "a whole number"),
        ("f64", "a number"),
        ("a boolean", "true or false"),
    ];
    let mut out = text.to_owned();
    for (rust, plain) in words {
        out = out.replace(rust, plain);
    }
    out
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized | ApiError::BadSignature => StatusCode::UNAUTHORIZED,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Internal(e) => {
                tracing::error!(error = ?e, "request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let message = match &self {
            ApiError::Internal(_) => {
                "something went wrong inside Baton; the log has the details".to_owned()
            }
            other => other.to_string(),
        };
        (status, Json(json!({ "error": message }))).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_kinds_read_as_words() {
        assert_eq!(
            plain_kinds("invalid type: string \"x\", expected i64 at line 1 column 40"),
            "invalid type: string \"x\", expected a whole number at line 1 column 40"
        );
    }
}
