//! An extractor wrapper whose rejections are the API's JSON errors instead of axum's plain text
//! (the mappings are the `From` impls in `error`).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::ApiError;

/// Any of axum's extractors whose rejection maps to an [`ApiError`]: `Api<Path<i64>>` answers
/// a malformed segment (`/api/v1/events/abc`) and `Api<Query<T>>` a malformed or unknown
/// parameter with a 400 `invalid_parameter` that names it.
#[derive(Debug)]
pub struct Api<E>(pub E);

impl<S, E> FromRequestParts<S> for Api<E>
where
    E: FromRequestParts<S>,
    ApiError: From<E::Rejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Ok(Api(E::from_request_parts(parts, state).await?))
    }
}
