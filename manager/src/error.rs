//! The one place where manager errors become HTTP responses: a status code
//! and a one-line plain-text body.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tonic::Code;

use crate::client::{CallError, Refusal};
use crate::cluster::ClusterError;
use crate::query::QueryError;

/// Seconds a client is asked to wait after a 503.
const RETRY_AFTER_SECS: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("value is larger than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("request body stalled: nothing received for {0:?}")]
    BodyTimeout(std::time::Duration),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

impl From<crate::preconditions::BadCondition> for ApiError {
    fn from(e: crate::preconditions::BadCondition) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Cluster(e) => cluster_status(e),
        }
    }
}

fn cluster_status(e: &ClusterError) -> StatusCode {
    match e {
        ClusterError::Unavailable
        | ClusterError::RingIncomplete(_)
        | ClusterError::NoPlacement
        | ClusterError::StalePlacement
        | ClusterError::PrimaryUnavailable { .. }
        | ClusterError::ConditionsUnsupported { .. }
        | ClusterError::ConditionalUnknown => StatusCode::SERVICE_UNAVAILABLE,
        ClusterError::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
        ClusterError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        ClusterError::VersionTooNew { .. } => StatusCode::BAD_GATEWAY,
        // Not a 503: sending the same write again would order it above
        // the newer ones, which is a new write, not a retry.
        ClusterError::Overtaken(_) | ClusterError::StatusUnknown => StatusCode::CONFLICT,
        ClusterError::Rejected(CallError::Refused { refusal, .. }) => match refusal {
            Refusal::InvalidRequest => StatusCode::BAD_REQUEST,
            Refusal::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::VersionTooNew => StatusCode::BAD_GATEWAY,
            Refusal::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            Refusal::NotReadable => StatusCode::SERVICE_UNAVAILABLE,
        },
        ClusterError::Rejected(CallError::Status { status, .. }) => match status.code() {
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::ResourceExhausted => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_GATEWAY,
        },
        ClusterError::Rejected(_) => StatusCode::BAD_GATEWAY,
    }
}

/// A cluster error's one line of text: a refusal carries the node's own
/// reason.
fn message(e: &ClusterError) -> String {
    match e {
        ClusterError::Rejected(CallError::Status { status, .. }) => status.message().to_string(),
        ClusterError::Rejected(CallError::Refused { message, .. }) => message.clone(),
        other => other.to_string(),
    }
}

/// A cluster error as the RESP front answers it: `-ERR <the same line
/// HTTP answers>`, with no line breaks. `TRYAGAIN` (which Redis clients
/// may retry on their own) only where nothing was applied: never for a
/// write whose outcome is unknown, or that was applied on some replica.
pub fn resp_error(e: &ClusterError) -> String {
    let code = match e {
        ClusterError::RingIncomplete(_)
        | ClusterError::NoPlacement
        | ClusterError::PrimaryUnavailable { .. }
        | ClusterError::ConditionsUnsupported { .. } => "TRYAGAIN",
        _ => "ERR",
    };
    let text: String = message(e)
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    format!("{code} {text}")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            ApiError::Cluster(e) => message(e),
            other => other.to_string(),
        };
        let mut resp = (status, format!("{body}\n")).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        // A failed condition says what the key holds now.
        if let ApiError::Cluster(ClusterError::PreconditionFailed {
            current: Some(version),
        }) = self
        {
            resp.headers_mut()
                .insert(header::ETAG, crate::preconditions::etag(version));
        }
        resp
    }
}
