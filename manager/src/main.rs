use clap::{CommandFactory, FromArgMatches};
use ringcache_common::process::shutdown_signal;
use ringcache_manager::{health, serve, ManagerOptions};

// Request handling allocates small, short-lived buffers at a high rate;
// mimalloc's per-thread free lists cut the allocator's share of CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    ringcache_common::process::init_logging();
    let matches = ManagerOptions::command().arg(health::arg()).get_matches();
    let opts = ManagerOptions::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Some(url) = health::requested(&matches, opts.listen) {
        return health::run(&url).await;
    }
    let Some(listener) = ringcache_common::process::bind(opts.listen).await else {
        return std::process::ExitCode::FAILURE;
    };
    ringcache_common::process::run_to_exit("manager", serve(listener, opts, shutdown_signal()))
        .await
}
