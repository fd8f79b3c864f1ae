//! The one place where data node errors become gRPC statuses.

use tonic::Status;

use crate::node::NodeError;
use crate::store::StoreError;

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Self {
        let msg = e.to_string();
        match e {
            NodeError::EmptyKey
            | NodeError::KeyTooLong { .. }
            | NodeError::BadNodeId(_)
            | NodeError::Store(StoreError::KeyTooLong { .. }) => Status::invalid_argument(msg),
            NodeError::ValueTooLarge { .. }
            | NodeError::Store(StoreError::TooLarge { .. } | StoreError::Full) => {
                Status::resource_exhausted(msg)
            }
        }
    }
}
