//! The embedded cluster: with no `--nodes`, the manager runs data nodes in
//! its own process, each a real gRPC server on a loopback port, so one
//! command gives a working cache (and grpcurl still reaches every node).

use ringcache_datanode::NodeOptions;

use crate::config::ManagerOptions;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Running embedded nodes.
pub struct Embedded {
    /// (id, address) of each node.
    pub addrs: Vec<(String, String)>,
    tasks: Vec<JoinHandle<()>>,
}

impl Embedded {
    /// Starts `--embedded-nodes` data nodes on 127.0.0.1 ports chosen by the
    /// system, with the manager's limits and token; they stop when
    /// `shutdown` is cancelled.
    pub async fn start(
        opts: &ManagerOptions,
        shutdown: &CancellationToken,
    ) -> std::io::Result<Self> {
        let count = opts.embedded_nodes;
        let mut addrs = Vec::with_capacity(count);
        let mut tasks = Vec::with_capacity(count);
        for i in 0..count {
            let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
            let addr = listener.local_addr()?;
            let id = format!("embedded-{}", i + 1);
            let opts = NodeOptions {
                listen: addr,
                id: Some(id.clone()),
                max_memory: opts.embedded_max_memory,
                max_key_bytes: opts.max_key_bytes,
                max_value_bytes: usize::try_from(opts.max_value_bytes).unwrap_or(usize::MAX),
                auth_token: opts.auth_token.clone(),
                ..NodeOptions::default()
            };
            tracing::info!(node = i + 1, %addr, "embedded data node (grpcurl -plaintext {addr} list)");
            let stop = shutdown.clone().cancelled_owned();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = ringcache_datanode::serve(listener, opts, stop).await {
                    tracing::error!(%addr, error = %e, "embedded data node failed");
                }
            }));
            addrs.push((id, format!("http://{addr}")));
        }
        Ok(Self { addrs, tasks })
    }

    /// Waits for every node to finish shutting down.
    pub async fn join(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
