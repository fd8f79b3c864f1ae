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
pub fn local_url(listen: SocketAddr, https: bool) -> String {
    format!(
        "{}://{}/healthz",
        if https { "https" } else { "http" },
        ringcache_common::health::loopback(listen)
    )
}

/// The URL to check when `--health-check` was given, `None` otherwise.
pub fn requested(matches: &clap::ArgMatches, listen: SocketAddr, https: bool) -> Option<String> {
    ringcache_common::health::requested_url(matches, local_url(listen, https))
}

/// How the check reaches a manager serving HTTPS: the CA its certificate
/// chains to (`--tls-client-ca`, else `--node-tls-ca`: one PKI, usually)
/// and, when clients must present one, the manager's node certificate.
pub fn client_tls(
    opts: &crate::config::ManagerOptions,
) -> Result<Option<std::sync::Arc<ringcache_common::tls::ClientTls>>, String> {
    if opts.tls_cert.is_none() {
        return Ok(None);
    }
    let ca = opts
        .tls_client_ca
        .clone()
        .or_else(|| opts.node_tls_ca.clone())
        .ok_or(
            "--tls-cert without --tls-client-ca or --node-tls-ca: no CA to verify the manager with",
        )?;
    let identity = match (&opts.node_tls_cert, &opts.node_tls_key) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        _ => None,
    };
    ringcache_common::tls::ClientTls::load(
        ringcache_common::tls::ClientFiles {
            ca,
            identity,
            server_name: None,
        },
        &[b"http/1.1"],
    )
    .map(Some)
    .map_err(|e| e.to_string())
}

/// Splits `http://host:port/path` (or https) into whether it is https,
/// `host:port` and `/path`.
fn split_url(url: &str) -> Result<(bool, &str, &str), String> {
    let (https, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(rest), _) => (false, rest),
        (_, Some(rest)) => (true, rest),
        _ => {
            return Err(format!(
                "{url:?}: only http:// or https://host:port/path URLs are supported"
            ))
        }
    };
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
    if authority.is_empty() || !authority.contains(':') {
        return Err(format!(
            "{url:?}: give the port, as in http://127.0.0.1:8080/healthz"
        ));
    }
    Ok((https, authority, path))
}

/// Sends `GET url` over HTTP/1.1; `Ok` only on a 2xx status.
pub async fn check(
    url: &str,
    tls: Option<&std::sync::Arc<ringcache_common::tls::ClientTls>>,
    timeout: Duration,
) -> Result<(), String> {
    let (https, authority, path) = split_url(url)?;
    let call = async {
        let tcp = if https {
            let tls = tls.ok_or_else(|| {
                format!("{url}: https needs a CA (--tls-client-ca or --node-tls-ca)")
            })?;
            let (host, port) = authority
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                .ok_or_else(|| format!("{url:?}: give the port"))?;
            Box::new(
                tls.connect(host, port)
                    .await
                    .map_err(|e| format!("cannot connect to {authority} over TLS: {e}"))?,
            ) as Box<dyn Stream>
        } else {
            Box::new(
                TcpStream::connect(authority)
                    .await
                    .map_err(|e| format!("cannot connect to {authority}: {e}"))?,
            ) as Box<dyn Stream>
        };
        let mut tcp = tcp;
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

/// What the check talks over: TCP, or TLS over TCP.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// Runs the check and reports it the way container health checks read it.
pub async fn run(
    url: &str,
    tls: Option<&std::sync::Arc<ringcache_common::tls::ClientTls>>,
) -> ExitCode {
    ringcache_common::health::report(
        check(url, tls, TIMEOUT).await,
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
            Ok((false, "127.0.0.1:8080", "/cluster"))
        );
        assert_eq!(split_url("http://[::1]:80"), Ok((false, "[::1]:80", "/")));
        assert_eq!(split_url("https://a:1/"), Ok((true, "a:1", "/")));
        assert!(split_url("ftp://a:1/").is_err());
        assert!(split_url("http://nohost/").is_err());
        assert_eq!(
            local_url("0.0.0.0:8080".parse().unwrap(), false),
            "http://127.0.0.1:8080/healthz"
        );
        assert_eq!(
            local_url("0.0.0.0:8080".parse().unwrap(), true),
            "https://127.0.0.1:8080/healthz"
        );
    }

    #[tokio::test]
    async fn https_without_a_ca_is_an_error_not_a_plain_request() {
        let r = check("https://127.0.0.1:1/healthz", None, Duration::from_secs(1)).await;
        assert!(r.is_err_and(|e| e.contains("needs a CA")));
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
            let r = check(
                &format!("http://{addr}/cluster"),
                None,
                Duration::from_secs(5),
            )
            .await;
            assert_eq!(r.is_ok(), healthy, "{answer:?}: {r:?}");
            server.await.unwrap();
        }
    }
}
