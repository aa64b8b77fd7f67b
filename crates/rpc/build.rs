//! Generates only the tonic service stubs; messages come from `ztmesh-proto`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
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
