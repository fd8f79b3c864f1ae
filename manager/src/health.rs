//! `manager --health-check [URL]`: sends `GET URL` to a running manager and
//! exits 0 on a 2xx answer, 1 otherwise. Container health checks use it: a
//! `FROM scratch` image has no shell or curl, only this binary.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Name of the flag (and of its clap argument id), as on the data node.
pub use ringcache_common::health::FLAG;
/// Longest a check may take, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// The `--health-check [URL]` flag, to add to the manager's command line.
pub fn arg() -> clap::Arg {
    ringcache_common::health::flag(
        "Send GET URL (default: /healthz on this manager's --listen port on \
             loopback), then exit 0 on a 2xx answer, 1 otherwise",
    )
}

/// `/healthz` of a manager listening on `listen`, from its own host: open
/// even when a token is required, 200 while a data node is readable.
pub fn local_url(listen: SocketAddr) -> String {
    format!(
        "http://{}/healthz",
        ringcache_common::health::loopback(listen)
    )
}

/// The URL to check when `--health-check` was given, `None` otherwise.
pub fn requested(matches: &clap::ArgMatches, listen: SocketAddr) -> Option<String> {
    ringcache_common::health::requested_url(matches, local_url(listen))
}

/// Splits `http://host:port/path` into `host:port` and `/path`.
fn split_url(url: &str) -> Result<(&str, &str), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: only http://host:port/path URLs are supported"))?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
    if authority.is_empty() || !authority.contains(':') {
        return Err(format!(
            "{url:?}: give the port, as in http://127.0.0.1:8080/healthz"
        ));
    }
    Ok((authority, path))
}

/// Sends `GET url` over HTTP/1.1; `Ok` only on a 2xx status.
pub async fn check(url: &str, timeout: Duration) -> Result<(), String> {
    let (authority, path) = split_url(url)?;
    let call = async {
        let mut tcp = TcpStream::connect(authority)
            .await
            .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: ringcache-health-check\r\n\
             Connection: close\r\n\r\n"
        );
        tcp.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("cannot send to {authority}: {e}"))?;
        // The status line is all we need; it comes first.
        let mut head = Vec::with_capacity(256);
        let mut buf = [0u8; 256];
        while !head.contains(&b'\n') && head.len() < 4096 {
            let n = tcp
                .read(&mut buf)
                .await
                .map_err(|e| format!("cannot read from {authority}: {e}"))?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&head);
        let line = line.lines().next().unwrap_or_default();
        let code = line
            .strip_prefix("HTTP/1.")
            .and_then(|s| s.split_whitespace().nth(1))
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| format!("{url}: not an HTTP answer: {line:?}"))?;
        if (200..300).contains(&code) {
            Ok(())
        } else {
            Err(format!("{url} answered {line:?}"))
        }
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| format!("no answer from {url} within {timeout:?}"))?
}

/// Runs the check and reports it the way container health checks read it.
pub async fn run(url: &str) -> ExitCode {
    ringcache_common::health::report(
        check(url, TIMEOUT).await,
        &format!("manager at {url} is serving"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_into_authority_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:8080/cluster"),
            Ok(("127.0.0.1:8080", "/cluster"))
        );
        assert_eq!(split_url("http://[::1]:80"), Ok(("[::1]:80", "/")));
        assert!(split_url("https://a:1/").is_err());
        assert!(split_url("http://nohost/").is_err());
        assert_eq!(
            local_url("0.0.0.0:8080".parse().unwrap()),
            "http://127.0.0.1:8080/healthz"
        );
    }

    #[tokio::test]
    async fn status_codes_decide() {
        for (answer, healthy) in [
            ("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", true),
            ("HTTP/1.1 503 Service Unavailable\r\n\r\n", false),
            ("garbage\r\n", false),
        ] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                s.write_all(answer.as_bytes()).await.unwrap();
            });
            let r = check(&format!("http://{addr}/cluster"), Duration::from_secs(5)).await;
            assert_eq!(r.is_ok(), healthy, "{answer:?}: {r:?}");
            server.await.unwrap();
        }
    }
}
