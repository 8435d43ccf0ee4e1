//! One error type for every route: a status and a JSON body `{"error": code, "message": text}`
//! that says what is wrong and what to do. Internal failures are logged once and answered
//! without detail.

use axum::Json;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::ingest::IngestError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.code, "message": self.message });
        (self.status, Json(body)).into_response()
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError::bad_request("invalid_parameter", rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> ApiError {
        ApiError::bad_request("invalid_parameter", path_problem(&rejection))
    }
}

/// `"abc" in the path must be a whole number`.
fn path_problem(rejection: &PathRejection) -> String {
    let PathRejection::FailedToDeserializePathParams(e) = rejection else {
        return rejection.body_text();
    };
    match e.kind() {
        ErrorKind::ParseErrorAtKey {
            value,
            expected_type,
            ..
        }
        | ErrorKind::ParseError {
            value,
            expected_type,
        }
        | ErrorKind::ParseErrorAtIndex {
            value,
            expected_type,
            ..
        } if expected_type.starts_with(['i', 'u']) => {
            format!("{value:?} in the path must be a whole number")
        }
        _ => e.body_text(),
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> ApiError {
        let status = match &e {
            IngestError::MissingHeader(_)
            | IngestError::InvalidHeader { .. }
            | IngestError::UnsupportedTarget(_)
            | IngestError::Body(_)
            | IngestError::BodyUnreadable(_) => StatusCode::BAD_REQUEST,
            IngestError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            IngestError::UnsupportedContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IngestError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            IngestError::MissingSignature => StatusCode::UNAUTHORIZED,
            IngestError::BadSignature(_) | IngestError::NoSecret => StatusCode::FORBIDDEN,
            IngestError::Store(_) | IngestError::Internal(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        if status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(error = %e, "delivery refused with 503");
        } else {
            tracing::info!(error = %e, status = status.as_u16(), "delivery refused");
        }
        ApiError::new(status, e.code(), e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::EventNotFound(id) => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("event {id} does not exist (it may have been purged)"),
            ),
            StoreError::Closed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "hookdock is shutting down; try again",
            ),
            // Retrying cannot help here: the row is there but its bytes do not decode.
            corrupt @ (StoreError::CorruptBody { .. } | StoreError::Corrupt(_)) => {
                tracing::error!(error = %corrupt, "stored data unreadable");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "stored_data_unreadable",
                    format!("{corrupt}; the row is kept as it is"),
                )
            }
            other => {
                tracing::error!(error = %other, "storage error");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    "the database is unavailable; see the server log",
                )
            }
        }
    }
}
