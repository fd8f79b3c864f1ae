use clap::{CommandFactory, FromArgMatches};
use ringcache_common::process;
use ringcache_manager::{health, serve, ManagerOptions};

// Request handling allocates small, short-lived buffers at a high rate;
// mimalloc's per-thread free lists cut the allocator's share of CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    process::init_logging();
    let matches = ManagerOptions::command().arg(health::arg()).get_matches();
    let opts = ManagerOptions::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    process::block_on(opts.worker_threads, async move {
        if let Some(url) = health::requested(&matches, opts.listen, opts.tls_cert.is_some()) {
            let tls = match health::client_tls(&opts) {
                Ok(tls) => tls,
                Err(e) => return ringcache_common::health::report(Err(e), ""),
            };
            return health::run(&url, tls.as_ref()).await;
        }
        let Some(listener) = process::bind(opts.listen).await else {
            return std::process::ExitCode::FAILURE;
        };
        process::run_to_exit("manager", serve(listener, opts, process::shutdown_signal())).await
    })
}
