//! The commands that run for long raise their soft open-file limit to the
//! hard one at start (`src/limits.rs`): the real binary, started under a
//! low soft limit by util-linux's `prlimit`.

use std::process::Command;

use rustix::process::{Resource, getrlimit};

#[test]
fn a_relay_started_under_a_low_soft_limit_raises_it_to_the_hard_one() {
    // Limits this test may set without privileges: at most our own hard one.
    let ours = getrlimit(Resource::Nofile).maximum.unwrap_or(u64::MAX);
    let hard = ours.min(4096);
    let soft = (hard / 2).min(256);
    let missing = std::env::temp_dir().join(format!("ztmesh-no-such-dir-{}", std::process::id()));
    let out = Command::new("prlimit")
        .arg(format!("--nofile={soft}:{hard}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_ztmesh"))
        .args(["relay", "--data-dir"])
        .arg(&missing)
        .env("ZTMESH_LOG", "info")
        .output()
        .expect("run prlimit (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // It raises the limit first, then fails on the missing data directory.
    assert!(
        stderr.contains(&format!(
            "raised the open-file limit to the hard limit from=Some({soft}) to={hard}"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("is not an initialised server data directory"),
        "{stderr}"
    );
}
