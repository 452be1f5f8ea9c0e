use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::json;

/// An API error: a status and a short message for the client. Details of server-side failures
/// go to the log, never to the client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Conflict(String),
    /// Storage cannot be written for now: 503, worth retrying later.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn internal(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        ApiError::Internal(Box::new(err))
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(source) = &self {
            tracing::error!(error = %source, "request failed");
        }
        let mut response =
            (self.status(), Json(json!({ "error": self.to_string() }))).into_response();
        if let ApiError::Unavailable(_) = self {
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("30"),
            );
        }
        response
    }
}

impl From<gantry_engine::Error> for ApiError {
    fn from(err: gantry_engine::Error) -> Self {
        use gantry_engine::Error as E;
        match err {
            E::NoSuchRun(_) | E::NoSuchJob(_) => ApiError::NotFound(err.to_string()),
            E::RunNotFinished(_) | E::JobNotFinished(_) | E::ShuttingDown => {
                ApiError::Conflict(err.to_string())
            }
            E::Store(err) => err.into(),
            other => ApiError::internal(other),
        }
    }
}

/// What a client is told when the store cannot be written.
pub(crate) const STORAGE_UNAVAILABLE: &str = "Gantry cannot store anything right now (its storage \
     cannot be written: a full disk or I/O errors); nothing was recorded, try again later";

impl From<gantry_store::Error> for ApiError {
    fn from(err: gantry_store::Error) -> Self {
        if err.is_unavailable() {
            tracing::error!(error = %err, "the store cannot be written");
            return ApiError::Unavailable(STORAGE_UNAVAILABLE.to_owned());
        }
        ApiError::internal(err)
    }
}

pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({ "error": "internal error" })),
    )
        .into_response()
}
