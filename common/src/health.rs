//! `datanode --health-check [URL]` (liveness) and `datanode --ready-check
//! [URL]` (readiness): ask a running data node over `grpc.health.v1`
//! whether it is serving, or whether it holds its share of the keys, and
//! exit 0 or 1. Container health checks use them: a `FROM scratch` image has
//! no shell, curl or grpc_health_probe, only this binary.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use tonic::transport::Endpoint;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Name of the flag (and of its clap argument id).
pub const FLAG: &str = "health-check";
/// Name of the readiness flag (and of its clap argument id).
pub const READY_FLAG: &str = "ready-check";
/// The service whose status is asked for: the node is alive and serving.
pub const SERVICE: &str = "ringcache.v1.DataNode";
/// SERVING only while the node holds its share of the keys (synced: not
/// warming up or being repaired). For readiness probes; liveness probes
/// ask [`SERVICE`], so that a node warming up slowly is not killed.
pub const READY_SERVICE: &str = "ringcache.v1.DataNode.Ready";
/// Longest a check may take, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// The `--health-check [URL]` flag, to add to the node's command line.
pub fn arg() -> clap::Arg {
    flag(
        "Check that the data node at URL (default: this node's --listen port \
             on loopback) is serving over grpc.health.v1, then exit 0 if it is, 1 if not",
    )
}

/// The `--ready-check [URL]` flag, to add to the node's command line.
pub fn ready_arg() -> clap::Arg {
    named_flag(
        READY_FLAG,
        "Check that the data node at URL (default: this node's --listen port \
             on loopback) holds its share of the keys (synced, not warming up or \
             being repaired) over grpc.health.v1 (service ringcache.v1.DataNode.Ready), \
             then exit 0 if it does, 1 if not",
    )
    .conflicts_with(FLAG)
}

/// A `--health-check [URL]` flag with `help` (shared with the manager).
pub fn flag(help: &'static str) -> clap::Arg {
    named_flag(FLAG, help)
}

fn named_flag(name: &'static str, help: &'static str) -> clap::Arg {
    clap::Arg::new(name)
        .long(name)
        .value_name("URL")
        .num_args(0..=1)
        .default_missing_value("")
        .help(help)
}

/// `listen` as reached from its own host: an unspecified address
/// (`0.0.0.0`, `::`) becomes loopback.
pub fn loopback(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Where a node listening on `listen` is reached from its own host.
pub fn local_url(listen: SocketAddr) -> String {
    format!("http://{}", loopback(listen))
}

/// The URL given to `--health-check`, `default` when the flag came without
/// one, `None` when it is absent. Shared with the manager's check.
pub fn requested_url(matches: &clap::ArgMatches, default: String) -> Option<String> {
    flag_url(matches, FLAG, default)
}

fn flag_url(matches: &clap::ArgMatches, flag: &str, default: String) -> Option<String> {
    // `try_`: the manager's command line has no readiness flag.
    let url = matches.try_get_one::<String>(flag).ok().flatten()?;
    Some(if url.is_empty() { default } else { url.clone() })
}

/// The URL and service to check when `--health-check` or `--ready-check`
/// was given, `None` otherwise.
pub fn requested(matches: &clap::ArgMatches, listen: SocketAddr) -> Option<(String, &'static str)> {
    if let Some(url) = flag_url(matches, READY_FLAG, local_url(listen)) {
        return Some((url, READY_SERVICE));
    }
    requested_url(matches, local_url(listen)).map(|url| (url, SERVICE))
}

/// Asks the node at `url` (`http://host:port`) for the status of
/// [`SERVICE`]; `Ok` only when it is `SERVING`.
pub async fn check(url: &str, timeout: Duration) -> Result<(), String> {
    check_service(url, SERVICE, None, timeout).await
}

/// Asks the node at `url` for the status of `service`; `Ok` only when it
/// is `SERVING`.
pub async fn check_service(
    url: &str,
    service: &str,
    tls: Option<&std::sync::Arc<crate::tls::ClientTls>>,
    timeout: Duration,
) -> Result<(), String> {
    let endpoint = Endpoint::from_shared(crate::tls::plain_scheme(url))
        .map_err(|e| format!("invalid URL {url:?}: {e}"))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let call = async {
        let channel = match tls {
            Some(tls) => {
                endpoint
                    .connect_with_connector(crate::tls::GrpcConnector::new(tls.clone()))
                    .await
            }
            None => endpoint.connect().await,
        }
        .map_err(|e| format!("cannot connect to {url}: {}", chain(&e)))?;
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .map_err(|s| format!("health check at {url} failed: {s}"))?
            .into_inner()
            .status();
        match status {
            ServingStatus::Serving => Ok(()),
            other => Err(format!("{service} at {url} is {}", other.as_str_name())),
        }
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| format!("no answer from {url} within {timeout:?}"))?
}

/// Runs the check of `service` and reports it the way container health
/// checks read it.
pub async fn run(
    url: &str,
    service: &str,
    tls: Option<&std::sync::Arc<crate::tls::ClientTls>>,
) -> ExitCode {
    report(
        check_service(url, service, tls, TIMEOUT).await,
        &format!("{service} at {url} is SERVING"),
    )
}

/// Exit status and one line for a check's outcome (shared with the
/// manager's check).
pub fn report(outcome: Result<(), String>, healthy: &str) -> ExitCode {
    match outcome {
        Ok(()) => {
            println!("{healthy}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// An error and its sources, `: `-separated (transport errors alone say
/// little).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    let mut last = s.clone();
    while let Some(cause) = source {
        let text = cause.to_string();
        // Wrappers often repeat their source's message.
        if text != last {
            s.push_str(": ");
            s.push_str(&text);
        }
        last = text;
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_listen_addresses_are_checked_on_loopback() {
        assert_eq!(
            local_url("0.0.0.0:50051".parse().unwrap()),
            "http://127.0.0.1:50051"
        );
        assert_eq!(local_url("[::]:7".parse().unwrap()), "http://[::1]:7");
        assert_eq!(
            local_url("10.1.2.3:9".parse().unwrap()),
            "http://10.1.2.3:9"
        );
    }

    #[tokio::test]
    async fn nothing_listening_is_unhealthy() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let err = check(&local_url(addr), Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(err.contains("cannot connect"), "{err}");
    }
}
