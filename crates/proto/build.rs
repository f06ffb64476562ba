//! Compiles the protocol definitions with `protox` (pure Rust, no system
//! `protoc`) and generates prost messages plus tonic clients and servers.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/apache/rocketmq/v2/definition.proto",
        "proto/apache/rocketmq/v2/service.proto",
        "proto/sofamq/namesrv/v1/namesrv.proto",
        "proto/sofamq/admin/v1/admin.proto",
    ];
    println!("cargo:rerun-if-changed=proto");

    let fds = protox::compile(files, ["proto"])?;

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("file_descriptor_set.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Message bodies as `Bytes`: decoding slices tonic's receive buffer instead of
        // copying every body into its own Vec (one allocation per request, not per message).
        .bytes(".apache.rocketmq.v2.Message.body")
        // prost's codec, except that a send request's message list is sized before it
        // is decoded (src/codec.rs).
        .codec_path("crate::codec::Codec")
        .compile_fds(fds)?;
    Ok(())
}
