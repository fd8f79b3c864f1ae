//! The `/ui` dashboard page: served from the binary without the token, and
//! carrying no cluster data (its script fetches that with the token).

use std::time::Duration;

use clap::Parser;
use ringcache_manager::{serve, ManagerOptions};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const TOKEN: &str = "ui-test-token";

async fn get(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut r = http.get(url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap())
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[tokio::test]
async fn ui_is_served_without_the_token_and_holds_no_cluster_data() {
    let opts = ManagerOptions::try_parse_from(["manager", "--auth-token", TOKEN]).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, opts, async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();

    // Wait until the cluster has nodes with ids and addresses to leak.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let cluster = loop {
        let (s, _, body) = get(&http, &format!("{base}/cluster"), Some(TOKEN)).await;
        assert_eq!(s, 200, "{body}");
        let c: serde_json::Value = serde_json::from_str(&body).unwrap();
        let nodes = c["nodes"].as_array().cloned().unwrap_or_default();
        if !nodes.is_empty() && nodes.iter().all(|n| n["state"] == "up") {
            break c;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nodes never came up: {c}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // The data the page must fetch instead of carrying.
    assert_eq!(get(&http, &format!("{base}/cluster"), None).await.0, 401);
    assert_eq!(get(&http, &format!("{base}/metrics"), None).await.0, 401);

    for path in ["/ui", "/ui/"] {
        let (s, h, html) = get(&http, &format!("{base}{path}"), None).await;
        assert_eq!(s, 200, "{path}");
        assert!(
            header(&h, "content-type").starts_with("text/html"),
            "{path}: {h:?}"
        );
        assert!(
            html.contains(r#"<script src="/ui/app.js""#),
            "{path} does not load the app script:\n{html}"
        );
        assert!(header(&h, "content-security-policy").contains("script-src 'self'"));
        for n in cluster["nodes"].as_array().unwrap() {
            for field in ["address", "id", "instance"] {
                if let Some(v) = n[field].as_str() {
                    assert!(!html.contains(v), "{path} leaks node {field} {v}");
                }
            }
        }
    }

    let (s, h, js) = get(&http, &format!("{base}/ui/app.js"), None).await;
    assert_eq!(s, 200);
    assert!(header(&h, "content-type").starts_with("text/javascript"));
    assert!(js.contains("\"/cluster\"") && js.contains("\"/metrics\""));
    let (s, h, css) = get(&http, &format!("{base}/ui/style.css"), None).await;
    assert_eq!(s, 200);
    assert!(header(&h, "content-type").starts_with("text/css"));
    assert!(!css.is_empty());

    // Only the dashboard's own files are open: anything else under /ui is
    // behind the token like every other path.
    assert_eq!(get(&http, &format!("{base}/ui/nope"), None).await.0, 401);
    assert_eq!(
        get(&http, &format!("{base}/ui/nope"), Some(TOKEN)).await.0,
        404
    );

    let _ = stop.send(());
    let r = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("manager stops within deadline");
    assert!(r.unwrap().is_ok());
}

/// Every metric the Grafana dashboard queries is one the manager exports, so
/// a renamed metric cannot leave the dashboard silently empty.
#[tokio::test]
async fn grafana_dashboard_queries_only_exported_metrics() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/ringcache.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() > 10, "dashboard has too few queries: {exprs:?}");

    // The near cache on, so its metrics are exported too.
    let opts = ManagerOptions::try_parse_from(["manager", "--near-cache", "1MiB"]).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, opts, async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    // A labelled family appears with its first sample: make one request.
    let _ = get(&http, &format!("{base}/?key=warm"), None).await;
    // Per-node metrics appear with the nodes' first stats.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let (s, _, text) = get(&http, &format!("{base}/metrics"), None).await;
        assert_eq!(s, 200);
        if text.contains("ringcache_node_items{") {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no node stats:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let families: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    let exported = |name: &str| {
        families.iter().any(|(f, kind)| {
            *f == name
                // OpenMetrics declares a counter without its `_total`.
                || (*kind == "counter" && name.strip_suffix("_total") == Some(f))
                || (*kind == "histogram"
                    && ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name.strip_suffix(s) == Some(f)))
        })
    };
    let mut checked = 0;
    for expr in &exprs {
        for (i, _) in expr.match_indices("ringcache_") {
            let name: String = expr[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(exported(&name), "dashboard queries {name}, not in /metrics");
            checked += 1;
        }
    }
    assert!(checked >= exprs.len());

    let _ = stop.send(());
    let r = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("manager stops within deadline");
    assert!(r.unwrap().is_ok());
}
