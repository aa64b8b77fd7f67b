//! Release builds place the packet path's functions next to each other.
//!
//! A ping 100 ms after the last finds the caches and the TLBs cold, and
//! each 4 KiB page of code the packet path touches costs a page walk
//! before its lines can be fetched. As compiled, the functions a round
//! trip runs are spread over 46 pages of the binary; laid out together
//! (`hot-path.order`, a list of their symbols for the linker) they span
//! 29 (see deploy/bench/LATENCY.md, "Code layout").
//!
//! Only for release builds linked by LLD, the linker of the Rust
//! toolchain on x86_64 Linux since 1.90: LLD's `--symbol-ordering-file`.
//! The names are Rust's v0 symbols (`.cargo/config.toml`), which carry
//! no hash of the code: editing a listed function keeps its name, but
//! renaming or moving it, a dependency update or another compiler does
//! not. A symbol of the list that a build no longer has is skipped
//! without a word; `.ci/run` checks the release build against the list
//! (`deploy/bench/footprint.py --check-order`), and `footprint.sh`
//! reports how many are still found and writes a new list. Set
//! `ZTMESH_NO_CODE_LAYOUT=1` to link in the compiler's order, or when
//! another linker is configured (it would reject the option).

use std::env;
use std::path::Path;

const ORDER: &str = "hot-path.order";

fn main() {
    println!("cargo:rerun-if-changed={ORDER}");
    println!("cargo:rerun-if-env-changed=ZTMESH_NO_CODE_LAYOUT");
    let var = |name: &str| env::var(name).unwrap_or_default();
    let wanted = var("PROFILE") == "release" && var("ZTMESH_NO_CODE_LAYOUT").is_empty();
    let lld_default = var("CARGO_CFG_TARGET_ARCH") == "x86_64"
        && var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ENV") == "gnu";
    // A linker chosen in Cargo's configuration or through RUSTFLAGS (or
    // a linker flavor) may not be LLD.
    let own_linker = !var("RUSTC_LINKER").is_empty()
        || var("CARGO_ENCODED_RUSTFLAGS")
            .split('\x1f')
            .any(|flag| flag.contains("linker"));
    if !(wanted && lld_default) || own_linker {
        return;
    }
    let order = Path::new(&var("CARGO_MANIFEST_DIR")).join(ORDER);
    println!(
        "cargo:rustc-link-arg-bin=ztmesh=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo:rustc-link-arg-bin=ztmesh=-Wl,--no-warn-symbol-ordering");
}
