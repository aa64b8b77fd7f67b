#!/usr/bin/env python3
"""Network-namespace lab for ztmesh (Python 3.11, stdlib only).

Layout (all names unique per lab, so labs can run in parallel):

    <prefix>-lan   a namespace holding the bridge `br0`
    <prefix>-srv   the coordination server, eth0 = 10.88.0.1/24
    <prefix>-<n>   one per node, eth0 = 10.88.0.11/24, .12, ...

Each non-lan namespace is joined to the bridge with a veth pair created
directly between namespaces (no interface is ever created in the host
namespace). Processes run with `ip netns exec NS ...` in their own session
and log to files in a temp dir. Cleanup always kills every process the lab
started (and anything else left inside its namespaces) and deletes every
namespace, on exceptions, Ctrl-C and SIGTERM too.

ICMP checks use a pure-Python echo over a raw socket (no `ping` needed).

Self-test (root; no ztmesh binary needed):  python3 tests/netns/lab.py selftest
Remove namespaces left by killed labs:     python3 tests/netns/lab.py cleanup-stale
"""

from __future__ import annotations

import json
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
NS_PREFIX = "ztl"
SUBNET = "10.88.0"
SERVER_IP = f"{SUBNET}.1"
SERVER_PORT = 7443
CMD_TIMEOUT = 20.0  # default bound for any one helper command


class Skip(Exception):
    """The environment cannot run network-namespace tests (not a failure)."""


class LabError(Exception):
    """Something in the lab itself went wrong (a failure, not a verdict)."""


def binary_path() -> Path:
    return Path(os.environ.get("ZTMESH_BIN") or REPO / "target" / "debug" / "ztmesh")


def _run(args: list[str], timeout: float = CMD_TIMEOUT, check: bool = True,
         env: dict[str, str] | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env,
                           input=input, stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise LabError(f"timed out after {timeout}s: {' '.join(args)}") from e
    if check and p.returncode != 0:
        raise LabError(f"`{' '.join(args)}` exited {p.returncode}: {(p.stderr or p.stdout).strip()}")
    return p


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    """Poll predicate until it returns something truthy; return it, or None at timeout.

    Exceptions raised by the predicate count as "not yet" (the last one is kept
    in wait_for.last_error for messages), except KeyboardInterrupt/SystemExit.
    """
    deadline = time.monotonic() + timeout
    wait_for.last_error = None  # type: ignore[attr-defined]
    while True:
        try:
            v = predicate()
            if v:
                return v
        except (LabError, OSError, ValueError, KeyError, TypeError) as e:
            wait_for.last_error = e  # type: ignore[attr-defined]
        if time.monotonic() + interval > deadline:
            return None
        time.sleep(interval)


def tail(path: Path, n: int = 40) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            lines = f.read().decode(errors="replace").splitlines()
        return "\n".join(lines[-n:])
    except OSError as e:
        return f"(cannot read {path}: {e})"


# --- pure-Python ICMP echo and one-shot TCP echo, run inside namespaces ---------

# Shared by the ICMP scripts: the checksum, the raw socket, an echo
# request, and whether a datagram is the reply to one of ours.
ICMP_PRELUDE = r"""
import os, select, socket, struct, sys, time
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
ident = os.getpid() & 0xffff
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.setblocking(False)
def echo(seq, payload):
    hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq & 0xffff)
    return struct.pack("!BBHHH", 8, 0, csum(hdr + payload), ident, seq & 0xffff) + payload
def reply_seq(data, addr, dst):
    ihl = (data[0] & 0x0f) * 4
    icmp = data[ihl:ihl + 8]
    if len(icmp) == 8 and addr[0] == dst:
        t, _, _, rid, rseq = struct.unpack("!BBHHH", icmp)
        if t == 0 and rid == ident:
            return rseq
    return None
"""

_PING_SRC = ICMP_PRELUDE + r"""
dst, count, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + timeout
next_send, seq = 0.0, 0
while time.monotonic() < deadline:
    now = time.monotonic()
    if seq < count and now >= next_send:
        seq += 1
        try:
            s.sendto(echo(seq, b"ztmesh-lab" + struct.pack("!d", now)), (dst, 0))
        except OSError as e:
            print("send:", e, file=sys.stderr)
        next_send = now + 0.3
    r, _, _ = select.select([s], [], [], 0.05)
    if not r:
        continue
    data, addr = s.recvfrom(65535)
    rseq = reply_seq(data, addr, dst)
    if rseq is not None:
        print("reply from %s seq=%d" % (dst, rseq))
        sys.exit(0)
sys.exit(1)
"""

_LISTEN_SRC = r"""
import errno, socket, sys, time
ip, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
bind_deadline = time.monotonic() + 5  # the overlay address may still be on its way to the TUN
while True:
    try:
        s.bind((ip, port))
        s.listen(4)
        break
    except OSError as e:
        if e.errno == errno.EADDRNOTAVAIL and time.monotonic() < bind_deadline:
            time.sleep(0.2)
            continue
        print("BINDFAIL %s" % e, flush=True)
        sys.exit(3)
print("READY", flush=True)
s.settimeout(timeout)
try:
    while True:
        c, addr = s.accept()
        c.settimeout(2)
        data = b""
        try:
            while not data.endswith(b"\n"):
                chunk = c.recv(4096)
                if not chunk:
                    break
                data += chunk
            c.sendall(data)
        except OSError:
            pass
        finally:
            c.close()
        print("SERVED %s" % addr[0], flush=True)
        sys.exit(0)
except socket.timeout:
    sys.exit(1)
"""

_CONNECT_SRC = r"""
import socket, sys
ip, port, timeout, token = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
try:
    c = socket.create_connection((ip, port), timeout=timeout)
    c.settimeout(timeout)
    c.sendall(token.encode() + b"\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = c.recv(4096)
        if not chunk:
            break
        data += chunk
    c.close()
except OSError as e:
    print("connect: %s" % e)
    sys.exit(1)
if data.strip() == token.encode():
    print("echo ok")
    sys.exit(0)
print("bad echo: %r" % data)
sys.exit(2)
"""


class Proc:
    def __init__(self, name: str, popen: subprocess.Popen, log: Path | None, ns: str):
        self.name, self.popen, self.log, self.ns = name, popen, log, ns

    def alive(self) -> bool:
        return self.popen.poll() is None


class Lab:
    """Context manager: namespaces on enter, everything removed on exit."""

    def __init__(self, nodes: list[str] = ("n1", "n2", "n3"), verbose: bool = True,
                 keep_tmp: bool = False):
        self.node_names = list(nodes)
        self.verbose = verbose
        self.keep_tmp = keep_tmp
        self.prefix = f"{NS_PREFIX}{os.getpid()}-{secrets.token_hex(2)}"
        self.lan_ns = f"{self.prefix}-lan"
        self.server_ns = f"{self.prefix}-srv"
        self.node_ns = {n: f"{self.prefix}-{n}" for n in self.node_names}
        self.underlay_ip = {n: f"{SUBNET}.{11 + i}" for i, n in enumerate(self.node_names)}
        self.created_ns: list[str] = []
        self.procs: list[Proc] = []
        self.server: Proc | None = None
        self.nodes: dict[str, Proc] = {}
        self.tmp: Path | None = None
        self.admin_env: dict[str, str] = {}
        self.init_info: dict[str, Any] = {}
        self.server_url = f"https://{SERVER_IP}:{SERVER_PORT}"
        self._old_handlers: dict[int, Any] = {}
        self._cleaned = False

    # --- lifecycle -----------------------------------------------------------

    def say(self, msg: str) -> None:
        if self.verbose:
            print(f"[lab] {msg}", file=sys.stderr, flush=True)

    def __enter__(self) -> "Lab":
        self._preflight()
        self._install_signal_handlers()
        try:
            self.tmp = Path(tempfile.mkdtemp(prefix=f"ztmesh-lab-{self.prefix}-"))
            self._build_network()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and not issubclass(exc_type, Skip):
            self.dump_logs()
        self.cleanup()

    def _preflight(self) -> None:
        if sys.platform != "linux":
            raise Skip("not Linux")
        if os.geteuid() != 0:
            raise Skip("must run as root (network namespaces and TUN need it); try: sudo -E python3 "
                       + " ".join(sys.argv))
        if not os.path.exists("/dev/net/tun"):
            raise Skip("/dev/net/tun does not exist")
        if shutil.which("ip") is None:
            raise Skip("`ip` (iproute2) is not installed")
        # can we actually create a namespace here (containers may forbid it)?
        probe = f"{NS_PREFIX}{os.getpid()}-{secrets.token_hex(2)}-probe"
        p = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10)
        if p.returncode != 0:
            raise Skip(f"cannot create a network namespace: {p.stderr.strip()}")
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)

    def _install_signal_handlers(self) -> None:
        def on_term(signum, frame):
            raise KeyboardInterrupt(f"signal {signum}")
        for sig in (signal.SIGTERM, signal.SIGHUP):
            try:
                self._old_handlers[sig] = signal.signal(sig, on_term)
            except ValueError:  # not in the main thread
                pass

    def _restore_signal_handlers(self) -> None:
        for sig, h in self._old_handlers.items():
            try:
                signal.signal(sig, h)
            except (ValueError, TypeError):
                pass
        self._old_handlers.clear()

    def _add_ns(self, ns: str) -> None:
        _run(["ip", "netns", "add", ns], timeout=10)
        self.created_ns.append(ns)
        _run(["ip", "-n", ns, "link", "set", "lo", "up"], timeout=10)

    def _build_network(self) -> None:
        self.say(f"creating namespaces {self.prefix}-{{lan,srv,{','.join(self.node_names)}}}")
        self._add_ns(self.lan_ns)
        _run(["ip", "-n", self.lan_ns, "link", "add", "br0", "type", "bridge"], timeout=10)
        _run(["ip", "-n", self.lan_ns, "link", "set", "br0", "up"], timeout=10)
        members = [("srv", self.server_ns, SERVER_IP)] + [
            (n, self.node_ns[n], self.underlay_ip[n]) for n in self.node_names]
        for i, (short, ns, ip) in enumerate(members):
            self._add_ns(ns)
            port = f"p{i}"  # lives in the lan namespace only: short and unique there
            _run(["ip", "-n", self.lan_ns, "link", "add", port, "type", "veth",
                  "peer", "name", "eth0", "netns", ns], timeout=10)
            _run(["ip", "-n", self.lan_ns, "link", "set", port, "master", "br0", "up"], timeout=10)
            _run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0"], timeout=10)
            _run(["ip", "-n", ns, "link", "set", "eth0", "up"], timeout=10)

    def cleanup(self) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        old_int = signal.getsignal(signal.SIGINT)
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not abort cleanup
        except ValueError:
            old_int = None
        try:
            for p in reversed(self.procs):
                self._stop_proc(p, sig=signal.SIGTERM, grace=3.0)
            for ns in reversed(self.created_ns):
                self._kill_ns_pids(ns)
                r = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True,
                                   timeout=15)
                if r.returncode != 0:
                    print(f"[lab] warning: could not delete netns {ns}: {r.stderr.strip()}",
                          file=sys.stderr)
            self.created_ns.clear()
            if self.tmp and not self.keep_tmp:
                shutil.rmtree(self.tmp, ignore_errors=True)
            elif self.tmp:
                self.say(f"kept logs and state in {self.tmp}")
            self.say("cleaned up")
        finally:
            if old_int is not None:
                signal.signal(signal.SIGINT, old_int)
            self._restore_signal_handlers()

    @staticmethod
    def _kill_ns_pids(ns: str) -> None:
        """Kill anything still running inside a namespace we created."""
        for _ in range(3):
            r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                               timeout=10)
            pids = [int(x) for x in r.stdout.split() if x.isdigit()]
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)

    # --- processes -----------------------------------------------------------

    def _spawn(self, name: str, ns: str, args: list[str], env: dict[str, str] | None = None,
               log: bool = True, stdout_pipe: bool = False) -> Proc:
        assert self.tmp is not None
        logpath = self.tmp / f"{name}.log" if log else None
        out = open(logpath, "ab") if logpath else subprocess.DEVNULL
        full_env = dict(os.environ)
        full_env.setdefault("RUST_LOG", "info")
        full_env.setdefault("RUST_BACKTRACE", "1")
        if env:
            full_env.update(env)
        try:
            popen = subprocess.Popen(
                ["ip", "netns", "exec", ns, *args], stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else out,
                stderr=out, env=full_env, start_new_session=True)
        finally:
            if logpath:
                out.close()
        p = Proc(name, popen, logpath, ns)
        self.procs.append(p)
        return p

    def _stop_proc(self, p: Proc, sig: int = signal.SIGTERM, grace: float = 5.0) -> None:
        if p.popen.poll() is None:
            try:
                os.killpg(p.popen.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    p.popen.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    print(f"[lab] warning: {p.name} (pid {p.popen.pid}) survived SIGKILL",
                          file=sys.stderr)
        else:
            # the process leader is gone; still reap any stragglers in its group
            try:
                os.killpg(p.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if p.popen.stdout:
            p.popen.stdout.close()
        if p in self.procs:
            self.procs.remove(p)

    def exec_in(self, ns: str, args: list[str], timeout: float = CMD_TIMEOUT, check: bool = False,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        return _run(["ip", "netns", "exec", ns, *args], timeout=timeout, check=check, env=full_env)

    def ns_of(self, who: str) -> str:
        if who in ("server", "srv"):
            return self.server_ns
        if who == "lan":
            return self.lan_ns
        return self.node_ns[who]

    # --- ztmesh --------------------------------------------------------------

    def binary(self) -> str:
        b = binary_path()
        if not b.is_file() or not os.access(b, os.X_OK):
            raise LabError(f"ztmesh binary not found at {b}: run `cargo build` first "
                           "(or set ZTMESH_BIN)")
        return str(b)

    def start_server(self, timeout: float = 30.0, extra: list[str] = ()) -> None:
        assert self.tmp is not None
        zt = self.binary()
        data = self.tmp / "server"
        self.say("ztmesh server init")
        r = self.exec_in(self.server_ns, [zt, "server", "init", "--output", "json", "--san", SERVER_IP,
                                          "--data-dir", str(data)], timeout=60)
        (self.tmp / "server-init.log").write_text(r.stdout + r.stderr)
        if r.returncode != 0:
            raise LabError(f"`ztmesh server init` exited {r.returncode}: {r.stderr.strip()[-2000:]}")
        self.init_info = _parse_json_object(r.stdout, "server init --output json")
        for k in ("admin_key", "ca_cert"):
            if not self.init_info.get(k):
                raise LabError(f"`server init --output json` lacks {k!r}: {r.stdout[:500]}")
        ca = self.tmp / "ca.pem"
        ca.write_text(self.init_info["ca_cert"])
        self.admin_env = {"ZTMESH_SERVER": self.server_url,
                          "ZTMESH_API_KEY": self.init_info["admin_key"],
                          "ZTMESH_CA_CERT": str(ca)}
        self.say(f"starting server on {SERVER_IP}:{SERVER_PORT}")
        self.server = self._spawn("server", self.server_ns, [
            zt, "server", "--data-dir", str(data), "--listen", f"{SERVER_IP}:{SERVER_PORT}",
            "--advertise-url", self.server_url, *extra])

        def ready():
            if not self.server.alive():
                raise _Fatal(f"server exited with {self.server.popen.returncode}")
            return self.admin("devices", "list", "--output", "json", check=False,
                              timeout=5).returncode == 0
        self._wait_or_fail(ready, timeout, "server to accept admin requests")

    def _wait_or_fail(self, pred: Callable[[], Any], timeout: float, what: str) -> Any:
        try:
            v = wait_for(pred, timeout)
        except _Fatal as e:
            raise LabError(f"while waiting for {what}: {e}") from None
        if not v:
            last = getattr(wait_for, "last_error", None)
            raise LabError(f"timed out after {timeout}s waiting for {what}"
                           + (f" (last error: {last})" if last else ""))
        return v

    def admin(self, *args: str, check: bool = True, timeout: float = CMD_TIMEOUT
              ) -> subprocess.CompletedProcess:
        if not self.admin_env:
            raise LabError("server not started")
        return self.exec_in(self.server_ns, [self.binary(), "admin", *args], timeout=timeout,
                            check=check, env=self.admin_env)

    def create_token(self, tags: list[str] = (), reusable: bool = False,
                     expires: str | None = "1h") -> str:
        args = ["join-token", "create"]
        if reusable:
            args.append("--reusable")
        if expires:
            args += ["--expires", expires]
        for t in tags:
            args += ["--tag", t]
        out = self.admin(*args).stdout.strip().splitlines()
        if not out:
            raise LabError("join-token create printed nothing")
        return out[-1].strip()

    def devices(self) -> list[dict]:
        r = self.admin("devices", "list", "--output", "json")
        v = json.loads(r.stdout)
        if not isinstance(v, list):
            raise LabError(f"devices list is not a JSON array: {r.stdout[:300]}")
        return v

    def policy_file(self, text: str, name: str = "policy") -> Path:
        assert self.tmp is not None
        path = self.tmp / f"{name}-{secrets.token_hex(3)}.toml"
        path.write_text(text)
        return path

    def set_policy(self, text: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.admin("policy", "set", str(self.policy_file(text)), check=check)

    def state_dir(self, name: str) -> Path:
        assert self.tmp is not None
        return self.tmp / name

    def start_node(self, name: str, token: str, extra: list[str] = ()) -> Proc:
        if name not in self.node_ns:
            raise LabError(f"unknown node {name}; lab nodes: {self.node_names}")
        if name in self.nodes and self.nodes[name].alive():
            raise LabError(f"node {name} already running")
        self.say(f"starting node {name}")
        # The token goes in the environment, not the command line, which
        # every local user can read in /proc.
        p = self._spawn(name, self.node_ns[name], [
            self.binary(), "up", "--name", name,
            "--state-dir", str(self.state_dir(name)), *extra],
            env={"ZTMESH_JOIN_TOKEN": token})
        self.nodes[name] = p
        return p

    def status(self, name: str, timeout: float = 10.0) -> dict:
        r = self.exec_in(self.node_ns[name], [self.binary(), "status", "--state-dir",
                                              str(self.state_dir(name)), "--output", "json"],
                         timeout=timeout)
        if r.returncode != 0:
            raise LabError(f"`ztmesh status` on {name} exited {r.returncode}: {r.stderr.strip()}")
        return _parse_json_object(r.stdout, f"status of {name}")

    def wait_connected(self, names: list[str] | None = None, timeout: float = 45.0) -> None:
        names = names or list(self.nodes)

        def ok():
            for n in names:
                p = self.nodes.get(n)
                if p is None or not p.alive():
                    raise _Fatal(f"node {n} is not running"
                                 + (f" (exit {p.popen.returncode})" if p else ""))
                try:
                    if not self.status(n, timeout=5).get("control_connected"):
                        return False
                except LabError:
                    return False
            return True
        self._wait_or_fail(ok, timeout, f"{', '.join(names)} to connect to the server")

    def overlay_ip(self, name: str) -> str:
        addrs = self.status(name).get("addresses") or []
        for a in addrs:
            ip = a.split("/")[0]
            if ":" not in ip:
                return ip
        raise LabError(f"{name} has no IPv4 overlay address: {addrs}")

    def kill_server(self, sig: int = signal.SIGKILL) -> None:
        if self.server:
            self.say("killing server")
            self._stop_proc(self.server, sig=sig, grace=5.0)
            self.server = None

    def stop_node(self, name: str, sig: int = signal.SIGTERM) -> None:
        p = self.nodes.pop(name, None)
        if p:
            self.say(f"stopping node {name}")
            self._stop_proc(p, sig=sig, grace=5.0)

    # --- reachability --------------------------------------------------------

    def ping(self, src: str, dst_ip: str, count: int = 2, timeout: float = 1.5) -> bool:
        """ICMP echo from src's namespace; True if any reply arrives within timeout."""
        r = self.exec_in(self.ns_of(src), [sys.executable, "-c", _PING_SRC, dst_ip, str(count),
                                           str(timeout)], timeout=timeout + 10)
        return r.returncode == 0

    def tcp_check(self, src: str, dst: str, ip: str, port: int, timeout: float = 2.0) -> bool:
        """One-shot TCP echo: listener in dst's namespace on ip:port, client in src's.

        Returns True when the payload came back. Raises LabError when the
        listener cannot be set up (that is not a verdict about the network).
        """
        listener = self._spawn(f"listen-{dst}-{port}", self.ns_of(dst),
                               [sys.executable, "-u", "-c", _LISTEN_SRC, ip, str(port),
                                str(timeout + 3)], log=False, stdout_pipe=True)
        try:
            line = _readline(listener.popen, 10.0)
            if line != "READY":
                raise LabError(f"TCP listener in {dst} on {ip}:{port} failed: {line or 'no output'}")
            token = secrets.token_hex(8)
            r = self.exec_in(self.ns_of(src), [sys.executable, "-c", _CONNECT_SRC, ip, str(port),
                                               str(timeout), token], timeout=timeout + 10)
            return r.returncode == 0
        finally:
            self._stop_proc(listener, sig=signal.SIGKILL, grace=2.0)

    # --- diagnostics ---------------------------------------------------------

    def dump_logs(self, lines: int = 40) -> None:
        if not self.tmp or not self.tmp.exists():
            return
        for path in sorted(self.tmp.glob("*.log")):
            print(f"----- last {lines} lines of {path.name} -----", file=sys.stderr)
            print(tail(path, lines), file=sys.stderr)
        print("----- end of logs -----", file=sys.stderr, flush=True)


class _Fatal(Exception):
    """Raised inside a wait predicate to stop waiting at once."""


# _Fatal must escape wait_for: it is not in wait_for's "not yet" list.


def _readline(popen: subprocess.Popen, timeout: float) -> str:
    assert popen.stdout is not None
    fd = popen.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace").split("\n", 1)[0].strip()


def _parse_json_object(text: str, what: str) -> dict:
    text = text.strip()
    try:
        v = json.loads(text)
    except json.JSONDecodeError:
        start, end = text.find("{"), text.rfind("}")
        if start < 0 or end < start:
            raise LabError(f"{what}: no JSON object in output: {text[:500]!r}") from None
        try:
            v = json.loads(text[start:end + 1])
        except json.JSONDecodeError as e:
            raise LabError(f"{what}: bad JSON ({e}): {text[:500]!r}") from None
    if not isinstance(v, dict):
        raise LabError(f"{what}: expected a JSON object, got {type(v).__name__}")
    return v


def cleanup_stale() -> int:
    """Delete lab namespaces whose creating process is gone (after a SIGKILL)."""
    r = _run(["ip", "netns", "list"], timeout=10)
    removed = 0
    for line in r.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(rf"^{NS_PREFIX}(\d+)-[0-9a-f]{{4}}-", name)
        if not m or os.path.exists(f"/proc/{m.group(1)}"):
            continue
        Lab._kill_ns_pids(name)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=15)
        print(f"removed stale namespace {name}")
        removed += 1
    return removed


def selftest() -> int:
    """Namespaces + bridge + underlay reachability, no ztmesh needed."""
    t0 = time.monotonic()
    try:
        with Lab(nodes=["n1", "n2"]) as lab:
            names = set(_run(["ip", "netns", "list"]).stdout.split())
            missing = [ns for ns in lab.created_ns if ns not in names]
            assert not missing, f"namespaces missing: {missing}"
            ok = wait_for(lambda: lab.ping("n1", SERVER_IP), 10)
            print(f"{'PASS' if ok else 'FAIL'} underlay ping n1 -> server {SERVER_IP}")
            ok2 = lab.ping("n2", lab.underlay_ip["n1"])
            print(f"{'PASS' if ok2 else 'FAIL'} underlay ping n2 -> n1 {lab.underlay_ip['n1']}")
            bad = not lab.ping("n1", f"{SUBNET}.99", count=1, timeout=1.0)
            print(f"{'PASS' if bad else 'FAIL'} no reply from an absent address")
            tcp = lab.tcp_check("n1", "n2", lab.underlay_ip["n2"], 8080)
            print(f"{'PASS' if tcp else 'FAIL'} underlay tcp n1 -> n2:8080 echo")
            # nothing is listening now: the one-shot listener must be gone
            tcp2 = not lab.exec_in(lab.ns_of("n1"), [sys.executable, "-c", _CONNECT_SRC,
                                                      lab.underlay_ip["n2"], "8080", "1", "x"]
                                   ).returncode == 0
            print(f"{'PASS' if tcp2 else 'FAIL'} listener cleaned up after tcp_check")
            created = list(lab.created_ns)
            leftovers = [p for p in lab.procs]
            print(f"{'PASS' if not leftovers else 'FAIL'} no lab processes left running "
                  f"({len(leftovers)})")
            results = [ok, ok2, bad, tcp, tcp2, not leftovers]
        names = set(_run(["ip", "netns", "list"]).stdout.split())
        gone = not any(ns in names for ns in created)
        print(f"{'PASS' if gone else 'FAIL'} namespaces deleted on exit")
        results.append(gone)
    except Skip as e:
        print(f"SKIPPED: lab selftest: {e}")
        return 0
    passed = sum(1 for r in results if r)
    failed = len(results) - passed
    print(f"selftest took {time.monotonic() - t0:.1f}s")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "selftest":
        sys.exit(selftest())
    if cmd == "cleanup-stale":
        cleanup_stale()
        sys.exit(0)
    print(f"usage: {sys.argv[0]} selftest | cleanup-stale", file=sys.stderr)
    sys.exit(2)
