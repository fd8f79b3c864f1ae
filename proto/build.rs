//! Compiles `ringcache/v1/*.proto` with protox (pure Rust), so building needs
//! no system `protoc`. The descriptor set is kept for gRPC server reflection.

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
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
