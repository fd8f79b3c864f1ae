//! Compiles `ringcache/v1/*.proto`, and the subset of etcd's API that the
//! manager's placement store uses, with protox (pure Rust), so building
//! needs no system `protoc`. ringcache's descriptor set is kept for gRPC
//! server reflection.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["ringcache/v1/datanode.proto"];
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let fds = protox::compile(protos, ["."])?;
    std::fs::write(
        out_dir.join("ringcache_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        // Values are passed around as `bytes::Bytes`: cloning one is a
        // reference-count bump, not a copy of the value.
        .bytes(".")
        .compile_fds(fds)?;

    let etcd = ["etcd/etcdserverpb/rpc.proto", "etcd/mvccpb/kv.proto"];
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(protox::compile(etcd, ["."])?)?;
    for p in protos.iter().chain(&etcd) {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
