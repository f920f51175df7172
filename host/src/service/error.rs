//! The service's errors: each a status, a stable code and a one-line message, as JSON. A `RunError` maps to the
//! status a client can act on (a refused token is 403, bad input 400, an unknown file 404, a host fault 500), with
//! the code named after the run outcome it would have been.

use super::api::{ErrorBody, ErrorDetail};
use crate::error::{Outcome, RunError, one_line};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Self {
        ApiError { status, code: code.into(), message: one_line(&message.to_string()) }
    }

    pub fn bad_request(message: impl std::fmt::Display) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid-request", message)
    }

    pub fn unauthorized(message: impl std::fmt::Display) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl std::fmt::Display) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl std::fmt::Display) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not-found", message)
    }

    pub fn internal(message: impl std::fmt::Display) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "host-error", message)
    }
}

impl From<RunError> for ApiError {
    fn from(e: RunError) -> Self {
        let outcome = e.outcome();
        let status = match outcome {
            Outcome::TokenRefused | Outcome::GrantRefused => StatusCode::FORBIDDEN,
            Outcome::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Outcome::FileNotFound => StatusCode::NOT_FOUND,
            Outcome::HostError => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        let code = serde_json::to_value(outcome).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        ApiError { status, code, message: one_line(&e.to_string()) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code, message: self.message } };
        (self.status, axum::Json(body)).into_response()
    }
}

/// A JSON body whose rejections (malformed JSON, an unknown field, a wrong type, a body over the size cap) are the
/// service's own JSON errors, not axum's plain-text ones.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::rejection::JsonRejection;
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(JsonRejection::BytesRejection(e)) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                "the request body is over the size limit",
            )),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid-request",
                "send Content-Type: application/json",
            )),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}
