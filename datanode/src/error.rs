//! The one place where data node errors become gRPC statuses, and the
//! typed reasons that per-op errors of a batch carry.

use ringcache_proto::pb;
use tonic::{Code, Status};

use crate::node::NodeError;
use crate::store::StoreError;

impl NodeError {
    /// Why, as a client acts on it.
    pub fn reason(&self) -> pb::ErrorReason {
        match self {
            NodeError::EmptyKey
            | NodeError::KeyTooLong { .. }
            | NodeError::BadNodeId(_)
            | NodeError::OwnMark
            | NodeError::Store(StoreError::KeyTooLong { .. }) => pb::ErrorReason::InvalidRequest,
            NodeError::ValueTooLarge { .. }
            | NodeError::Store(StoreError::TooLarge { .. } | StoreError::Full) => {
                pb::ErrorReason::TooLarge
            }
            NodeError::Store(StoreError::VersionTooNew { .. }) => pb::ErrorReason::VersionTooNew,
            NodeError::PreconditionFailed { .. } => pb::ErrorReason::PreconditionFailed,
            NodeError::NotReadable => pb::ErrorReason::NotReadable,
        }
    }
}

fn code(reason: pb::ErrorReason) -> Code {
    match reason {
        pb::ErrorReason::InvalidRequest => Code::InvalidArgument,
        pb::ErrorReason::TooLarge => Code::ResourceExhausted,
        pb::ErrorReason::StalePlacement => Code::FailedPrecondition,
        pb::ErrorReason::VersionTooNew => Code::OutOfRange,
        pb::ErrorReason::PreconditionFailed => Code::FailedPrecondition,
        pb::ErrorReason::NotReadable => Code::Unavailable,
        pb::ErrorReason::Unspecified => Code::Internal,
    }
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Self {
        Status::new(code(e.reason()), e.to_string())
    }
}

impl From<NodeError> for pb::OpError {
    fn from(e: NodeError) -> Self {
        let reason = e.reason();
        let current_version = match e {
            NodeError::PreconditionFailed { current } => current,
            _ => 0,
        };
        pb::OpError {
            code: code(reason) as i32,
            message: e.to_string(),
            reason: reason as i32,
            placement: 0,
            current_version,
        }
    }
}
