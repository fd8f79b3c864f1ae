use clap::Parser;
use ringcache_datanode::{serve, shutdown_signal, NodeOptions};
use tracing_subscriber::EnvFilter;

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
    let opts = NodeOptions::parse();
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
