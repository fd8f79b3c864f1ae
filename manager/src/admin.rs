//! The membership admin API: `POST /cluster/nodes?addr=...` adds a data
//! node, `DELETE /cluster/nodes?id=...` removes one after its keys are
//! handed off. Both change the placement in etcd and answer 202; the
//! hand-off itself runs in the background (`/cluster` shows it).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::client::NodeClient;
use crate::config::node_uri;
use crate::placement::{self, ChangeError, MemberState, Versioned};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
pub struct Params {
    addr: Option<String>,
    id: Option<String>,
}

/// What a change was accepted as.
#[derive(Debug, Serialize)]
struct Accepted {
    /// The placement version that holds the change.
    version: u64,
    id: String,
    /// The node's part in that placement; absent once it is gone.
    state: Option<MemberState>,
}

fn text(status: StatusCode, msg: String) -> Response {
    (status, format!("{msg}\n")).into_response()
}

fn no_store() -> Response {
    text(
        StatusCode::CONFLICT,
        "membership changes need --etcd (this manager's placement is the fixed --nodes list)"
            .into(),
    )
}

fn answer(
    id: String,
    r: Result<Result<Versioned, ChangeError>, placement::etcd::EtcdError>,
) -> Response {
    match r {
        Ok(Ok(v)) => {
            let state = v.placement.member(&id).map(|m| m.state);
            let body = Accepted {
                version: v.version,
                id,
                state,
            };
            (StatusCode::ACCEPTED, Json(body)).into_response()
        }
        Ok(Err(e @ ChangeError::UnknownId(_))) => text(StatusCode::NOT_FOUND, e.to_string()),
        Ok(Err(e)) => text(StatusCode::CONFLICT, e.to_string()),
        Err(e) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("placement store: {e}"),
        ),
    }
}

/// `POST /cluster/nodes?addr=http://host:port`: asks the node its id and
/// adds it as `syncing`; it is read from once its share is handed to it.
pub async fn add_node(State(st): State<Arc<AppState>>, Query(p): Query<Params>) -> Response {
    let Some(store) = st.store.as_ref() else {
        return no_store();
    };
    let Some(addr) = p.addr.filter(|a| !a.trim().is_empty()) else {
        return text(StatusCode::BAD_REQUEST, "missing addr".into());
    };
    let uri = node_uri(&addr);
    let connect = st.cluster.connect();
    let id = match NodeClient::new(&uri, connect) {
        Ok(client) => match client.stats().await {
            Ok(stats) => stats.node_id,
            Err(e) => {
                return text(
                    StatusCode::BAD_GATEWAY,
                    format!("cannot reach the node at {uri}: {e}"),
                )
            }
        },
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    tracing::info!(%uri, %id, "adding a data node");
    let r = placement::update(store, |p| p.add(&id, &uri)).await;
    answer(id, r)
}

/// `DELETE /cluster/nodes?id=ID`: the node leaves once its share is handed
/// off (a node still being added is dropped at once).
pub async fn remove_node(State(st): State<Arc<AppState>>, Query(p): Query<Params>) -> Response {
    let Some(store) = st.store.as_ref() else {
        return no_store();
    };
    let Some(id) = p.id.filter(|i| !i.is_empty()) else {
        return text(StatusCode::BAD_REQUEST, "missing id".into());
    };
    tracing::info!(%id, "removing a data node");
    let r = placement::update(store, |p| p.remove(&id)).await;
    answer(id, r)
}
