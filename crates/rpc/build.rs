//! Generates only the tonic service stubs; messages come from `ztmesh-proto`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not baked in when it is compiled: the
    // compiled script is shared by checkouts that share a target directory.
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = ["ztmesh/v1/control.proto", "ztmesh/v1/admin.proto"];
    for file in &files {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let fds = protox::compile(files, [&root])?;
    tonic_prost_build::configure()
        .extern_path(".ztmesh.v1", "::ztmesh_proto::v1")
        .compile_fds(fds)?;
    Ok(())
}
