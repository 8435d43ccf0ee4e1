//! Extractors whose rejections are the API's JSON errors instead of axum's plain text.

use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::ApiError;

/// [`Path`], answering a malformed segment (`/api/v1/events/abc`) with a 400
/// `invalid_parameter` that names it.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(ApiError::bad_request(
                "invalid_parameter",
                path_problem(&rejection),
            )),
        }
    }
}

/// [`Query`], answering a malformed or unknown parameter with a 400 `invalid_parameter` that
/// says which.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(ApiError::bad_request(
                "invalid_parameter",
                rejection.body_text(),
            )),
        }
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
