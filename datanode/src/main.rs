use clap::{CommandFactory, FromArgMatches};
use ringcache_common::{health, process};
use ringcache_datanode::{serve, shutdown_signal, NodeOptions};

// The data node keeps glibc's allocator on purpose: with mimalloc its RSS
// under a full cache rose from 1.16x to 1.44x of --max-memory (see the
// limits test), and memory is what a cache node is for.

fn main() -> std::process::ExitCode {
    process::init_logging();
    let matches = NodeOptions::command()
        .arg(health::arg())
        .arg(health::ready_arg())
        .get_matches();
    let opts = NodeOptions::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    process::block_on(opts.worker_threads, async move {
        if let Some((url, service)) = health::requested(&matches, opts.listen) {
            // A node serving TLS is checked over TLS, as its peers reach it
            // (its certificate must name the loopback address checked).
            let tls = match opts.peer_tls() {
                Ok(tls) => tls,
                Err(e) => return health::report(Err(e.to_string()), ""),
            };
            if opts.tls_cert.is_some() && tls.is_none() {
                return health::report(
                    Err("--tls-cert without --tls-ca or --tls-client-ca: nothing to verify the node with".into()),
                    "",
                );
            }
            return health::run(&url, service, tls.as_ref()).await;
        }
        let Some(listener) = process::bind(opts.listen).await else {
            return std::process::ExitCode::FAILURE;
        };
        process::run_to_exit("data node", serve(listener, opts, shutdown_signal())).await
    })
}
