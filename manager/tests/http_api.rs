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
async fn membership_changes_without_etcd_are_refused_with_409() {
    let m = start(&[]).await;
    let (s, body) = m
        .call("POST", "/cluster/nodes?addr=http://127.0.0.1:1")
        .await;
    assert_eq!(s, 409, "{body}");
    assert!(body.contains("--etcd"), "{body}");
    assert_eq!(m.call("DELETE", "/cluster/nodes?id=x").await.0, 409);
    assert_eq!(m.call("PUT", "/cluster/nodes").await.0, 405);
    let c = m.cluster().await;
    assert_eq!(c["placement"], "static");
    assert_eq!(c["placement_version"], 0);
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
        ("POST", "/?key=k&value=v&ttl=+5", 400),
        ("POST", "/?key=k&value=v&ttl=", 400),
        ("DELETE", "/?key=a&key=b", 400),
        ("PUT", "/?key=k", 405),
        ("GET", "/nope", 404),
    ];
    for &(method, pq, want) in cases {
        let (s, body) = m.call(method, pq).await;
        assert_eq!(s, want, "{method} {pq}: {body}");
        assert!(
            body.ends_with('\n') && body.lines().count() == 1,
            "{method} {pq}: one-line body, got {body:?}"
        );
    }
    let long = format!("/?key={}&value=v", "k".repeat(251));
    assert_eq!(m.call("POST", &long).await.0, 400);
    let (s, _, _) = m.req("POST", "/?key=big", Some(vec![0; 2048])).await;
    assert_eq!(s, 413);
    let (_, _, h) = m.req("PUT", "/?key=k", None).await;
    assert!(h["allow"].to_str().unwrap().contains("POST"));
    // Nothing was stored by any of it: asked of the nodes themselves, not
    // read from heartbeats that may predate the requests.
    let c = m.cluster().await;
    for node in c["nodes"].as_array().unwrap() {
        let addr = node["address"].as_str().unwrap().to_string();
        let mut client = ringcache_proto::pb::data_node_client::DataNodeClient::connect(addr)
            .await
            .unwrap();
        let stats = client
            .stats(ringcache_proto::pb::StatsRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(stats.items, 0, "{stats:?}");
    }
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
    check_exposition(&text);
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
    // The scheme is case-insensitive, as HTTP auth schemes are.
    let r = m
        .http
        .get(url("/?key=k"))
        .header("authorization", "bearer s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

// ---- Connection limits and request bodies, over raw sockets (issue 14) ----

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest any of the tests below waits for something that must happen.
const WAIT: Duration = Duration::from_secs(10);

impl Manager {
    fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr()).await.unwrap()
    }
}

/// Reads until the peer closes (or `WAIT` passes: then panics); returns what
/// came and how long it took.
async fn read_to_close(s: &mut TcpStream) -> (String, Duration) {
    let start = tokio::time::Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(start + WAIT, s.read(&mut buf)).await {
            Err(_) => panic!(
                "connection still open after {WAIT:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), start.elapsed())
}

/// Reads one response head and body of `Content-Length` bytes.
async fn read_response(s: &mut TcpStream) -> (u16, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                return (status, body[..len].to_string());
            }
        }
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(n > 0, "closed before a whole response: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn a_request_head_that_never_ends_is_cut() {
    let m = start(&["--header-read-timeout", "300ms", "--idle-timeout", "60s"]).await;
    let mut s = m.connect().await;
    s.write_all(b"GET /?key=k HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (got, took) = read_to_close(&mut s).await;
    assert!(
        took >= Duration::from_millis(250),
        "cut too early: {took:?}"
    );
    // hyper closes without an answer; nothing but a close is fine too.
    assert!(!got.contains("200 OK"), "{got}");
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let m = start(&["--header-read-timeout", "60s", "--idle-timeout", "300ms"]).await;
    // HTTP/1 keep-alive after a request.
    let mut s = m.connect().await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s).await, (200, "ok\n".into()));
    let (_, took) = read_to_close(&mut s).await;
    assert!(took >= Duration::from_millis(250), "{took:?}");
    // A connection that never sends anything.
    let mut s = m.connect().await;
    read_to_close(&mut s).await;
    // HTTP/2 (prior knowledge): the preface and SETTINGS, then nothing; the
    // server says GOAWAY and closes.
    let mut s = m.connect().await;
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    read_to_close(&mut s).await;
}

#[tokio::test]
async fn connections_past_the_cap_wait_for_a_free_slot() {
    let m = start(&[
        "--max-connections",
        "2",
        "--idle-timeout",
        "60s",
        "--header-read-timeout",
        "60s",
    ])
    .await;
    // The test client's pooled connection holds a slot: let it go.
    let mut m = m;
    m.http = reqwest::Client::new();
    // Two connections that were served, and so hold both slots.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = m.connect().await;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut s).await, (200, "ok\n".into()));
        held.push(s);
    }
    let mut extra = m.connect().await;
    extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Not answered while both slots are held (a bounded wait for nothing).
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(500), extra.read(&mut buf)).await;
    assert!(early.is_err(), "served past the cap: {early:?}");
    // A slot frees up: the waiting client is served.
    drop(held.pop());
    assert_eq!(read_response(&mut extra).await, (200, "ok\n".into()));
    drop(held);
}

#[tokio::test]
async fn an_announced_oversized_body_gets_413_before_it_is_sent() {
    let m = start(&["--max-value-bytes", "1KiB", "--body-timeout", "30s"]).await;
    // Waiting for 100 Continue: told 413 instead, without sending a byte.
    let mut s = m.connect().await;
    s.write_all(
        b"POST /?key=k HTTP/1.1\r\nHost: x\r\nContent-Length: 2097152\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let (status, body) = read_response(&mut s).await;
    assert_eq!(
        (status, body.as_str()),
        (413, "value is larger than the limit of 1024 bytes\n")
    );
    // Announces 2 MiB, sends 64 KiB: answered at once, not after the body
    // timeout (30 s here).
    let mut s = m.connect().await;
    let mut req = b"POST /?key=k HTTP/1.1\r\nHost: x\r\nContent-Length: 2097152\r\n\r\n".to_vec();
    req.extend(std::iter::repeat_n(b'x', 64 << 10));
    s.write_all(&req).await.unwrap();
    let started = tokio::time::Instant::now();
    assert_eq!(read_response(&mut s).await.0, 413);
    assert!(started.elapsed() < Duration::from_secs(5));
    // A body longer than the limit without a length: 413 too.
    let mut s = m.connect().await;
    let mut req =
        b"POST /?key=k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n".to_vec();
    req.extend(std::iter::repeat_n(b'x', 2048));
    req.extend(b"\r\n0\r\n\r\n");
    s.write_all(&req).await.unwrap();
    assert_eq!(read_response(&mut s).await.0, 413);
    // With the value in the query, the body is not the value: it decides
    // nothing.
    let (s, _, _) = m.req("POST", "/?key=q&value=v", Some(vec![0; 4096])).await;
    assert_eq!(s, 201);
    assert_eq!(m.call("GET", "/?key=q").await, (200, "v".into()));
}

#[tokio::test]
async fn a_stalled_body_gets_408() {
    let m = start(&["--body-timeout", "300ms"]).await;
    let mut s = m.connect().await;
    s.write_all(b"POST /?key=k HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        .await
        .unwrap();
    let (status, body) = read_response(&mut s).await;
    assert_eq!(status, 408, "{body}");
    assert!(
        body.ends_with('\n') && body.lines().count() == 1,
        "{body:?}"
    );
    assert_eq!(m.call("GET", "/?key=k").await.0, 404);
}

#[tokio::test]
async fn healthz_answers_while_requests_are_shed() {
    let m = start(&["--max-concurrent-requests", "1", "--body-timeout", "30s"]).await;
    // One request holds the only slot while its body trickles.
    let mut slow = m.connect().await;
    slow.write_all(b"POST /?key=k HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while m.call("GET", "/?key=other").await.0 != 503 {
        assert!(tokio::time::Instant::now() < deadline, "never shed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The limit is one for the whole API, not one per route.
    assert_eq!(m.call("GET", "/cluster").await.0, 503);
    assert_eq!(m.call("GET", "/healthz").await, (200, "ok\n".into()));
    drop(slow);
}

/// curl, or `None` (skipped, said on stderr) outside CI; under CI a missing
/// curl fails the test.
fn curl() -> Option<&'static str> {
    let found = std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none_or(|v| v.is_empty()),
            "curl not installed but CI is set"
        );
        use std::io::Write;
        let _ = std::io::stderr().write_all(b"skipped: curl not installed\n");
    }
    found.then_some("curl")
}

#[tokio::test]
async fn http2_clients_see_the_413_of_a_large_body() {
    let m = start(&[]).await;
    let Some(curl) = curl() else { return };
    let file = std::env::temp_dir().join(format!("ringcache-h2-{}.bin", std::process::id()));
    std::fs::write(&file, vec![0u8; 2200 << 10]).unwrap();
    for (pq, want) in [("/?key=big", "413"), ("/?key=q&value=v", "201")] {
        let out = tokio::process::Command::new(curl)
            .args(["-sS", "--http2-prior-knowledge", "-m", "10"])
            .args(["-o", "/dev/null", "-w", "%{http_code} %{http_version}"])
            .args(["-X", "POST", "--data-binary"])
            .arg(format!("@{}", file.display()))
            .arg(format!("{}{pq}", m.base))
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout == format!("{want} 2"),
            "{pq}: curl {} said {stdout:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_file(&file);
}

/// Checks the `/metrics` text the way a scraper reads OpenMetrics: every
/// sample belongs to a family declared by `# TYPE` with a suffix its type
/// allows, the text ends with `# EOF`, and every metric the manager has
/// always exported is there with its type.
fn check_exposition(text: &str) {
    use std::collections::HashMap;
    let mut types: HashMap<&str, &str> = HashMap::new();
    let mut samples: Vec<(&str, &str)> = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "{text}");
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(types.insert(name, kind).is_none(), "{name} declared twice");
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        let name = line.split(['{', ' ']).next().unwrap();
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "bad value in {line:?}");
        let (family, kind) = types
            .iter()
            .filter(|(f, _)| name.starts_with(**f))
            .max_by_key(|(f, _)| f.len())
            .unwrap_or_else(|| panic!("{name} has no TYPE"));
        let suffix = &name[family.len()..];
        let allowed: &[&str] = match *kind {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "gauge" => &[""],
            other => panic!("unexpected type {other}"),
        };
        assert!(allowed.contains(&suffix), "{name} in {kind} {family}");
        samples.push((name, kind));
    }
    for (name, kind) in [
        ("ringcache_http_requests_total", "counter"),
        (
            "ringcache_http_request_duration_seconds_bucket",
            "histogram",
        ),
        ("ringcache_http_request_duration_seconds_sum", "histogram"),
        ("ringcache_http_request_duration_seconds_count", "histogram"),
        ("ringcache_node_up", "gauge"),
        ("ringcache_node_items", "gauge"),
        ("ringcache_node_bytes", "gauge"),
        ("ringcache_node_memory_limit_bytes", "gauge"),
        ("ringcache_node_evictions_total", "counter"),
        ("ringcache_node_hits_total", "counter"),
        ("ringcache_node_misses_total", "counter"),
    ] {
        assert!(
            samples.contains(&(name, kind)),
            "no {kind} sample {name} in\n{text}"
        );
    }
}
