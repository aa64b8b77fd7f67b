"""Finding, and installing when missing, the programs the benchmark runs.

Debian packages come from apt-get (`apt-get update` only when something is
missing); boringtun-cli and gotatun-cli are `cargo install --locked`ed into
a cache root (ZTMESH_BENCH_TOOLS, default /var/cache/ztmesh-bench) with one
build job, so another build can share the machine.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

from tunnels import WgImpl

TOOLS_ROOT = Path(os.environ.get("ZTMESH_BENCH_TOOLS") or "/var/cache/ztmesh-bench")
INSTALL_TIMEOUT = 3600.0

# binary -> Debian package
APT = {"iperf3": "iperf3", "wg": "wireguard-tools", "wireguard-go": "wireguard-go",
       "ping": "iputils-ping", "ss": "iproute2", "ip": "iproute2", "nft": "nftables"}
# implementation -> (crate, binary it installs)
CARGO = {"boringtun": ("boringtun-cli", "boringtun-cli"),
         "boringtun-t1": ("boringtun-cli", "boringtun-cli"),
         "gotatun": ("gotatun-cli", "gotatun")}

# All run in the foreground, as root, keeping their privileges (they would
# otherwise try to switch to the sudo user and fail, or lose the TUN).
WG_IMPLS = {
    "boringtun": WgImpl("boringtun", "bt", ("boringtun-cli", "--foreground",
                                            "--disable-drop-privileges")),
    "boringtun-t1": WgImpl("boringtun-t1", "b1", ("boringtun-cli", "--foreground",
                                                  "--disable-drop-privileges", "--threads", "1")),
    "gotatun": WgImpl("gotatun", "gt", ("gotatun", "--foreground", "--disable-drop-privileges",
                                        "--verbosity", "error")),
    "wireguard-go": WgImpl("wireguard-go", "wg", ("wireguard-go", "-f"),
                           env=(("LOG_LEVEL", "error"),)),
    "wg-kernel": WgImpl("wg-kernel", "wk", None),
}


class ToolError(Exception):
    """A tool is missing and could not be installed."""


def ensure(impls: list[str]) -> dict[str, str]:
    """Installs what `impls` need; returns implementation -> binary path."""
    need = ["iperf3", "ping", "ss", "ip"]
    if any(i in WG_IMPLS for i in impls):
        need.append("wg")
    if "wireguard-go" in impls:
        need.append("wireguard-go")
    if "ztmesh-relay" in impls:
        need.append("nft")  # blocks the direct path so the relay carries it
    missing = [b for b in need if shutil.which(b) is None]
    if missing:
        pkgs = sorted({APT[b] for b in missing})
        print(f"[bench] installing {' '.join(pkgs)} (missing: {' '.join(missing)})",
              file=sys.stderr)
        _run(["apt-get", "update"], 600)
        _run(["apt-get", "install", "-y", *pkgs], 900,
             env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    bins: dict[str, str] = {}
    for impl in impls:
        if impl in CARGO:
            crate, binary = CARGO[impl]
            path = TOOLS_ROOT / "bin" / binary
            if not path.is_file():
                cargo = _cargo()
                print(f"[bench] cargo install --locked {crate} into {TOOLS_ROOT} "
                      "(one build job; takes a few minutes)", file=sys.stderr)
                _run([cargo, "install", "--locked", "--root", str(TOOLS_ROOT), crate],
                     INSTALL_TIMEOUT, env=dict(os.environ, CARGO_BUILD_JOBS="1"))
            if not path.is_file():
                raise ToolError(f"`cargo install {crate}` did not produce {path}")
            bins[impl] = str(path)
        elif impl == "wireguard-go":
            bins[impl] = shutil.which("wireguard-go") or "wireguard-go"
    return bins


def ensure_valgrind() -> None:
    """valgrind (callgrind and callgrind_control), for footprint.py."""
    if shutil.which("valgrind") and shutil.which("callgrind_control"):
        return
    print("[bench] installing valgrind", file=sys.stderr)
    _run(["apt-get", "update"], 600)
    _run(["apt-get", "install", "-y", "valgrind"], 900,
         env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def ensure_perf() -> None:
    """perf, for stages.py (tracepoints only: no hardware counters needed)."""
    if shutil.which("perf") and subprocess.run(["perf", "--version"], capture_output=True,
                                               timeout=30).returncode == 0:
        return
    print("[bench] installing perf (linux-perf)", file=sys.stderr)
    _run(["apt-get", "update"], 600)
    _run(["apt-get", "install", "-y", "linux-perf"], 900,
         env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def versions(impls: list[str], bins: dict[str, str]) -> dict[str, str]:
    out = {"iperf3": _first_line(["iperf3", "--version"]),
           "wg": _first_line(["wg", "--version"])}
    for impl in impls:
        if impl in CARGO or impl == "wireguard-go":
            out[impl] = _first_line([bins[impl], "--version"])
        elif impl == "ztmesh":
            out[impl] = _first_line([bins.get("ztmesh", "ztmesh"), "--version"])
    return out


def _cargo() -> str:
    found = shutil.which("cargo")
    if found:
        return found
    homes = [Path.home()]
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user:
        try:
            homes.append(Path(pwd.getpwnam(sudo_user).pw_dir))
        except KeyError:
            pass
    for home in homes:
        c = home / ".cargo" / "bin" / "cargo"
        if c.is_file():
            return str(c)
    raise ToolError("cargo is needed to install boringtun-cli and gotatun-cli and was not "
                    "found (install Rust with rustup, or leave them out with --only)")


def _run(args: list[str], timeout: float, env: dict[str, str] | None = None) -> None:
    try:
        p = subprocess.run(args, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ToolError(f"timed out after {timeout:.0f}s: {' '.join(args)}") from None
    if p.returncode != 0:
        raise ToolError(f"`{' '.join(args)}` exited {p.returncode}")


def _first_line(args: list[str]) -> str:
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=10,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"(unknown: {e})"
    text = (p.stdout or p.stderr).strip()
    return text.splitlines()[0] if text else f"(no output, exit {p.returncode})"
