//! Process plumbing shared by both binaries: logging and shutdown signals.

use tracing_subscriber::EnvFilter;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), with colors only
/// on a terminal so that log files and container logs stay plain.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

/// The process's runtime: tokio's multi-threaded scheduler with
/// `worker_threads` workers (default: one per core). Several processes
/// sharing a few cores (nodes co-located with a manager) do better with
/// fewer workers each: fewer cross-thread wake-ups per request.
pub fn runtime(worker_threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = worker_threads {
        b.worker_threads(n);
    }
    b.enable_all().build()
}

/// Runs a binary's `main` future on [`runtime`], or fails the process when
/// the runtime cannot start.
pub fn block_on(
    worker_threads: Option<u16>,
    main: impl std::future::Future<Output = std::process::ExitCode>,
) -> std::process::ExitCode {
    match runtime(worker_threads.map(usize::from)) {
        Ok(rt) => rt.block_on(main),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A binary's options as its flags' defaults say (`#[arg(default_value
/// ...)]`, the one place they are written), ignoring the environment.
///
/// Panics only on a bug in those attributes (compile-time constants): each
/// binary's config tests parse them.
pub fn flag_defaults<T: clap::CommandFactory + clap::FromArgMatches>(bin: &str) -> T {
    let cmd = T::command().mut_args(|a| a.env(None::<&str>));
    let matches = cmd
        .try_get_matches_from([bin])
        .expect("the flags' defaults parse");
    T::from_arg_matches(&matches).expect("the flags' defaults parse")
}

/// Runs a server to completion as a process exit status, logging a failure
/// as `what failed`.
pub async fn run_to_exit<E: std::fmt::Display>(
    what: &str,
    server: impl std::future::Future<Output = Result<(), E>>,
) -> std::process::ExitCode {
    match server.await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "{what} failed");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Binds `addr`, or logs why not.
pub async fn bind(addr: std::net::SocketAddr) -> Option<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot listen");
            None
        }
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
