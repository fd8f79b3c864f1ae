//! The ceiling of the HTTP benchmark: a bare axum server answering the
//! manager's key API (`GET /?key=K`, `POST /?key=K` with the value as body
//! or `&value=V`) from an in-process sharded map, with no network hop
//! behind it. What ringcache's manager could reach if forwarding were free.
//!
//! `GET /stats` answers the number of keys held.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use clap::Parser;
use ringcache_manager::query;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Independently locked shards of the map.
    #[arg(long, default_value_t = 64)]
    shards: usize,
}

type Map = HashMap<String, Bytes, foldhash::fast::RandomState>;

struct Shards {
    maps: Box<[RwLock<Map>]>,
    hasher: foldhash::fast::FixedState,
}

impl Shards {
    fn new(n: usize) -> Self {
        Self {
            maps: (0..n.max(1)).map(|_| RwLock::new(Map::default())).collect(),
            hasher: foldhash::fast::FixedState::with_seed(7),
        }
    }

    fn shard(&self, key: &str) -> &RwLock<Map> {
        use std::hash::BuildHasher;
        let h = self.hasher.hash_one(key);
        &self.maps[((h as u128 * self.maps.len() as u128) >> 64) as usize]
    }

    fn len(&self) -> usize {
        self.maps
            .iter()
            .map(|m| m.read().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

fn bad(msg: String) -> Response {
    (StatusCode::BAD_REQUEST, msg).into_response()
}

/// The key and the optional `value` parameter, or a 400 message.
fn key_of(raw: Option<String>) -> Result<(String, Option<Bytes>), String> {
    let q = query::parse(raw.as_deref().unwrap_or("")).map_err(|e| e.to_string())?;
    match q.key {
        Some(k) if !k.is_empty() => Ok((k, q.value)),
        _ => Err("missing or empty key parameter".into()),
    }
}

async fn get_key(State(s): State<Arc<Shards>>, RawQuery(raw): RawQuery) -> Response {
    let key = match key_of(raw) {
        Ok((key, _)) => key,
        Err(e) => return bad(e),
    };
    let found = s
        .shard(&key)
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .cloned();
    match found {
        Some(v) => ([(header::CONTENT_TYPE, "application/octet-stream")], v).into_response(),
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

async fn set_key(State(s): State<Arc<Shards>>, RawQuery(raw): RawQuery, body: Bytes) -> Response {
    let (key, value) = match key_of(raw) {
        Ok(kv) => kv,
        Err(e) => return bad(e),
    };
    // Own the bytes, as a real store does, rather than pinning the request.
    let value = Bytes::copy_from_slice(&value.unwrap_or(body));
    let old = s
        .shard(&key)
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, value);
    if old.is_some() {
        (StatusCode::OK, "updated\n").into_response()
    } else {
        (StatusCode::CREATED, "created\n").into_response()
    }
}

async fn stats(State(s): State<Arc<Shards>>) -> String {
    format!("{}\n", s.len())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let shards = Arc::new(Shards::new(args.shards));
    let app = Router::new()
        .route("/", get(get_key).post(set_key))
        .route("/stats", get(stats))
        .with_state(shards);
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {}: {e}", args.listen);
            return std::process::ExitCode::FAILURE;
        }
    };
    // No Nagle delay on replies, as the manager does.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    eprintln!("http_ceiling listening on {}", args.listen);
    match axum::serve(listener, app).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("server failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
