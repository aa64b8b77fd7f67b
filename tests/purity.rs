//! The pure crates stay pure: no async runtime, gRPC, database or WireGuard
//! implementation in their normal dependency tree.

use std::process::Command;

const PURE: [&str; 4] = [
    "ztmesh-policy",
    "ztmesh-filter",
    "ztmesh-proto",
    "ztmesh-stun",
];
const FORBIDDEN: [&str; 4] = ["tokio", "tonic", "sqlx", "boringtun"];

#[test]
fn pure_crates_have_no_io_dependencies() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for krate in PURE {
        let output = Command::new(&cargo)
            .args([
                "tree",
                "--offline",
                "-e",
                "normal",
                "--prefix",
                "none",
                "-p",
                krate,
            ])
            .output()
            .expect("running cargo tree");
        assert!(
            output.status.success(),
            "cargo tree -p {krate} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let tree = String::from_utf8_lossy(&output.stdout);
        for line in tree.lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            assert!(
                !FORBIDDEN.contains(&name),
                "{krate} depends on {name}; pure crates must not (found in `cargo tree`)"
            );
        }
        assert!(
            tree.lines().count() > 1,
            "cargo tree printed nothing for {krate}"
        );
    }
}
