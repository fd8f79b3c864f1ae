use clap::{CommandFactory, FromArgMatches};
use ringcache_datanode::{health, serve, shutdown_signal, NodeOptions};
use tracing_subscriber::EnvFilter;

// The data node keeps glibc's allocator on purpose: with mimalloc its RSS
// under a full cache rose from 1.16x to 1.44x of --max-memory (see the
// limits test), and memory is what a cache node is for.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        // Colors only for people; log files and container logs stay plain.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let matches = NodeOptions::command().arg(health::arg()).get_matches();
    let opts = NodeOptions::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Some(url) = health::requested(&matches, opts.listen) {
        return health::run(&url).await;
    }
    let listener = match tokio::net::TcpListener::bind(opts.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(addr = %opts.listen, error = %e, "cannot listen");
            return std::process::ExitCode::FAILURE;
        }
    };
    match serve(listener, opts, shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "data node failed");
            std::process::ExitCode::FAILURE
        }
    }
}
