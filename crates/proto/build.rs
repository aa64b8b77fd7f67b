//! Compiles the .proto messages with protox (pure Rust), so no system protoc
//! is needed, and writes the encoded descriptor set for gRPC reflection and
//! for code that enumerates the services (the admin role table check).

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not baked in when it is compiled: the
    // compiled script is shared by checkouts that share a target directory.
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = ["ztmesh/v1/control.proto", "ztmesh/v1/admin.proto"];
    for file in &files {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let fds = protox::compile(files, [&root])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("ztmesh_descriptor.bin"), fds.encode_to_vec())?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
