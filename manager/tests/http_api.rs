//! The HTTP API end to end, in process: a manager with its embedded data
//! nodes, on loopback ports bound to :0.

use std::time::Duration;

use clap::Parser;
use ringcache_manager::{serve, ManagerOptions};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

struct Manager {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ringcache_manager::ServeError>>,
}

async fn start(args: &[&str]) -> Manager {
    let mut argv = vec!["manager"];
    argv.extend_from_slice(args);
    let opts = ManagerOptions::try_parse_from(argv).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, opts, async {
        let _ = rx.await;
    }));
    let token = args
        .iter()
        .position(|a| *a == "--auth-token")
        .map(|i| args[i + 1].to_string());
    let m = Manager {
        base,
        http: reqwest::Client::new(),
        token,
        stop: Some(tx),
        task,
    };
    m.await_all_up().await;
    m
}

impl Manager {
    async fn req(
        &self,
        method: &str,
        pq: &str,
        body: Option<Vec<u8>>,
    ) -> (u16, Vec<u8>, reqwest::header::HeaderMap) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self.http.request(method, format!("{}{pq}", self.base));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.body(b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, resp.bytes().await.unwrap().to_vec(), headers)
    }

    async fn call(&self, method: &str, pq: &str) -> (u16, String) {
        let (s, b, _) = self.req(method, pq, None).await;
        (s, String::from_utf8_lossy(&b).into_owned())
    }

    async fn cluster(&self) -> serde_json::Value {
        let (s, b) = self.call("GET", "/cluster").await;
        assert_eq!(s, 200);
        serde_json::from_str(&b).unwrap()
    }

    async fn await_all_up(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let c = self.cluster().await;
            let nodes = c["nodes"].as_array().unwrap();
            if !nodes.is_empty() && nodes.iter().all(|n| n["state"] == "up") {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nodes never came up: {c}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test]
async fn readme_curl_flow() {
    let m = start(&[]).await;
    assert_eq!(
        m.call("GET", "/?key=12345678").await,
        (404, "not found\n".into())
    );
    assert_eq!(
        m.call("POST", "/?key=123456&value=hello").await,
        (201, "created\n".into())
    );
    let (s, b, h) = m.req("GET", "/?key=123456", None).await;
    assert_eq!((s, b.as_slice()), (200, &b"hello"[..]));
    assert_eq!(h["content-type"], "application/octet-stream");
    assert_eq!(
        m.call("POST", "/?key=123456&value=world").await,
        (200, "updated\n".into())
    );
    assert_eq!(m.call("GET", "/?key=123456").await, (200, "world".into()));
    assert_eq!(
        m.call("DELETE", "/?key=123456").await,
        (200, "deleted\n".into())
    );
    assert_eq!(m.call("DELETE", "/?key=123456").await.0, 404);
    assert_eq!(m.call("GET", "/?key=123456").await.0, 404);
}

#[tokio::test]
async fn body_value_is_binary_safe_and_keys_are_percent_decoded() {
    let m = start(&[]).await;
    let value: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    let (s, _, _) = m.req("POST", "/?key=a%20b", Some(value.clone())).await;
    assert_eq!(s, 201);
    // The same key, spelled differently.
    let (s, b, _) = m.req("GET", "/?key=a+b", None).await;
    assert_eq!(s, 200);
    assert_eq!(b, value);
    assert_eq!(m.call("GET", "/?key=%E2%82%AC").await.0, 404);
    assert_eq!(m.call("POST", "/?key=%E2%82%AC&value=euro").await.0, 201);
    assert_eq!(m.call("GET", "/?key=%E2%82%AC").await, (200, "euro".into()));
}

#[tokio::test]
async fn bad_input_gets_a_clear_status() {
    let m = start(&["--max-value-bytes", "1KiB"]).await;
    let cases: &[(&str, &str, u16)] = &[
        ("GET", "/", 400),
        ("GET", "/?key=", 400),
        ("GET", "/?other=1", 400),
        ("POST", "/?key=%zz&value=v", 400),
        ("GET", "/?key=%FF", 400),
        ("POST", "/?key=k&value=v&ttl=-1", 400),
        ("POST", "/?key=k&value=v&ttl=soon", 400),
        ("DELETE", "/?key=a&key=b", 400),
        ("PUT", "/?key=k", 405),
        ("GET", "/nope", 404),
    ];
    for &(method, pq, want) in cases {
        let (s, body) = m.call(method, pq).await;
        assert_eq!(s, want, "{method} {pq}: {body}");
        if want != 405 {
            assert!(
                body.ends_with('\n') && body.lines().count() == 1,
                "{method} {pq}: one-line body, got {body:?}"
            );
        }
    }
    let long = format!("/?key={}&value=v", "k".repeat(251));
    assert_eq!(m.call("POST", &long).await.0, 400);
    let (s, _, _) = m.req("POST", "/?key=big", Some(vec![0; 2048])).await;
    assert_eq!(s, 413);
    let (_, _, h) = m.req("PUT", "/?key=k", None).await;
    assert!(h["allow"].to_str().unwrap().contains("POST"));
    // Nothing was stored by any of it.
    let c = m.cluster().await;
    let items: u64 = c["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["items"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(items, 0, "{c}");
    // And the server still answers.
    assert_eq!(m.call("POST", "/?key=k&value=v").await.0, 201);
}

#[tokio::test]
async fn ttl_in_seconds_expires_the_key() {
    let m = start(&[]).await;
    assert_eq!(m.call("POST", "/?key=t&value=v&ttl=1").await.0, 201);
    assert_eq!(m.call("POST", "/?key=forever&value=v&ttl=0").await.0, 201);
    assert_eq!(m.call("GET", "/?key=t").await.0, 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while m.call("GET", "/?key=t").await.0 == 200 {
        assert!(tokio::time::Instant::now() < deadline, "ttl never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(m.call("GET", "/?key=forever").await.0, 200);
}

#[tokio::test]
async fn keys_land_on_every_node_twice_and_cluster_reports_it() {
    let m = start(&["--embedded-nodes", "3"]).await;
    for i in 0..300 {
        let (s, body) = m.call("POST", &format!("/?key=key-{i}&value=v{i}")).await;
        assert_eq!(s, 201, "key-{i}: {body}");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let c = m.cluster().await;
        assert_eq!(c["replicas"], 2);
        let nodes = c["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 3);
        let items: Vec<u64> = nodes
            .iter()
            .map(|n| n["items"].as_u64().unwrap_or(0))
            .collect();
        let share: f64 = nodes
            .iter()
            .map(|n| n["ring_share"].as_f64().unwrap())
            .sum();
        assert!((share - 1.0).abs() < 1e-6);
        // Heartbeats carry the counts; wait for one after the writes.
        if items.iter().sum::<u64>() == 600 {
            assert!(items.iter().all(|&i| i > 100), "{items:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "items never reached 600: {items:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in (0..300).step_by(37) {
        assert_eq!(
            m.call("GET", &format!("/?key=key-{i}")).await,
            (200, format!("v{i}"))
        );
    }
}

#[tokio::test]
async fn shutdown_stops_the_manager_and_its_nodes() {
    let mut m = start(&[]).await;
    let _ = m.stop.take().unwrap().send(());
    let r = tokio::time::timeout(Duration::from_secs(10), &mut m.task)
        .await
        .expect("manager stops within deadline");
    assert!(r.unwrap().is_ok());
}

#[tokio::test]
async fn metrics_count_requests_and_report_nodes() {
    let m = start(&[]).await;
    m.call("POST", "/?key=m&value=1").await;
    m.call("GET", "/?key=m").await;
    m.call("GET", "/?key=absent").await;
    m.call("PUT", "/?key=m").await;
    let (s, text) = m.call("GET", "/metrics").await;
    assert_eq!(s, 200);
    for line in [
        "ringcache_http_requests_total{method=\"POST\",status=\"201\"} 1",
        "ringcache_http_requests_total{method=\"GET\",status=\"200\"} 1",
        "ringcache_http_requests_total{method=\"GET\",status=\"404\"} 1",
        "ringcache_http_requests_total{method=\"other\",status=\"405\"} 1",
        "ringcache_http_request_duration_seconds_count 4",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    let up = text
        .lines()
        .filter(|l| l.starts_with("ringcache_node_up{") && l.ends_with(" 1"))
        .count();
    assert_eq!(up, 3, "{text}");
    assert!(text.contains("# TYPE ringcache_node_evictions_total counter"));
    // The status paths are not counted as key requests.
    let (_, again) = m.call("GET", "/metrics").await;
    assert!(again.contains("ringcache_http_request_duration_seconds_count 4"));
}

#[tokio::test]
async fn a_token_is_required_when_configured() {
    let m = start(&["--auth-token", "s3cret"]).await;
    let url = |pq: &str| format!("{}{pq}", m.base);
    // Without the token: 401 everywhere but /healthz.
    for pq in ["/?key=k", "/cluster", "/metrics", "/nope"] {
        let r = m.http.get(url(pq)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{pq}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
    }
    let r = m
        .http
        .post(url("/?key=k&value=v"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        m.http.get(url("/healthz")).send().await.unwrap().status(),
        200
    );
    // With it, the whole path works, including the manager's calls to its
    // (token-protected) nodes.
    let r = m
        .http
        .post(url("/?key=k&value=v"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = m
        .http
        .get(url("/?key=k"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "v");
}
