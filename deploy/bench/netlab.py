"""Two network namespaces joined by one veth pair, and the processes run in them.

Names carry a random suffix, so a stale run never collides with a new one.
`close()` kills every process started here (and anything else left in the
namespaces), deletes the namespaces and removes the temp dir; bench.py calls
it from `finally`, and SIGTERM/SIGHUP are turned into KeyboardInterrupt so
that `finally` runs for them too.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

CMD_TIMEOUT = 30.0


class BenchError(Exception):
    """The harness could not do something it needs (not a measurement)."""


class Proc:
    """A long-running process in a namespace, in its own process group."""

    def __init__(self, name: str, popen: subprocess.Popen, log: Path):
        self.name, self.popen, self.log = name, popen, log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def dead_error(self) -> bool:
        self.raise_if_dead()
        return False

    def raise_if_dead(self) -> None:
        if self.popen.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.popen.returncode}; "
                             f"last lines of {self.log}:\n{tail(self.log)}")


class Netlab:
    def __init__(self, verbose: bool = True):
        self.suffix = secrets.token_hex(2)
        self.prefix = f"ztb{os.getpid()}-{self.suffix}"
        self.ns_a, self.ns_b = f"{self.prefix}-a", f"{self.prefix}-b"
        self.ip_a, self.ip_b = "10.77.0.1", "10.77.0.2"
        self.verbose = verbose
        self.namespaces: list[str] = []
        self.procs: list[Proc] = []
        self.tmp = Path(tempfile.mkdtemp(prefix=f"ztmesh-bench-{self.prefix}-"))
        self._closed = False

    def say(self, msg: str) -> None:
        if self.verbose:
            print(f"[bench] {msg}", file=sys.stderr, flush=True)

    # --- namespaces ------------------------------------------------------------

    def build(self) -> None:
        for ns in (self.ns_a, self.ns_b):
            self.run(["ip", "netns", "add", ns])
            self.namespaces.append(ns)
            self.run(["ip", "-n", ns, "link", "set", "lo", "up"])
        self.run(["ip", "-n", self.ns_a, "link", "add", "eth0", "type", "veth",
                  "peer", "name", "eth0", "netns", self.ns_b])
        for ns, ip in ((self.ns_a, self.ip_a), (self.ns_b, self.ip_b)):
            self.run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0"])
            self.run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        self.say(f"namespaces {self.ns_a} ({self.ip_a}) and {self.ns_b} ({self.ip_b}), "
                 f"temp dir {self.tmp}")

    def link_mtu(self, ns: str, iface: str) -> int | None:
        out = self.run(["ip", "-n", ns, "-j", "link", "show", iface], check=False).stdout
        links = json.loads(out or "[]")
        return links[0].get("mtu") if links else None

    # --- commands and processes ----------------------------------------------------

    def run(self, args: list[str], timeout: float = CMD_TIMEOUT, check: bool = True,
            env: dict[str, str] | None = None, input: str | None = None
            ) -> subprocess.CompletedProcess:
        full_env = dict(os.environ, **(env or {}))
        try:
            p = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                               env=full_env, input=input,
                               stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise BenchError(f"timed out after {timeout}s: {' '.join(args)}") from e
        if check and p.returncode != 0:
            raise BenchError(f"`{' '.join(args)}` exited {p.returncode}: "
                             f"{(p.stderr or p.stdout).strip()[-2000:]}")
        return p

    def spawn(self, name: str, ns: str, args: list[str], env: dict[str, str] | None = None
              ) -> Proc:
        log = self.tmp / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(["ip", "netns", "exec", ns, *args],
                                     stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                     env=dict(os.environ, **(env or {})),
                                     start_new_session=True)
        p = Proc(name, popen, log)
        self.procs.append(p)
        return p

    def stop(self, p: Proc, grace: float = 3.0) -> None:
        if p.popen.poll() is None:
            _killpg(p.pid, signal.SIGTERM)
            try:
                p.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _killpg(p.pid, signal.SIGKILL)
                try:
                    p.popen.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    print(f"[bench] warning: {p.name} (pid {p.pid}) survived SIGKILL",
                          file=sys.stderr)
        else:
            _killpg(p.pid, signal.SIGKILL)  # stragglers in its group
        if p in self.procs:
            self.procs.remove(p)

    def wait(self, pred: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.3) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            v = pred()
            if v:
                return v
            if time.monotonic() > deadline:
                raise BenchError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(interval)

    # --- cleanup -------------------------------------------------------------------

    def close(self, keep_tmp: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a 2nd Ctrl-C must not stop this
        try:
            for p in reversed(list(self.procs)):
                self.stop(p)
            for ns in reversed(self.namespaces):
                _kill_ns_pids(ns)
                r = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True,
                                   timeout=15)
                if r.returncode != 0:
                    print(f"[bench] warning: could not delete netns {ns}: {r.stderr.strip()}",
                          file=sys.stderr)
            self.namespaces.clear()
            for sock in Path("/var/run/wireguard").glob(f"*{self.suffix}?.sock"):
                sock.unlink(missing_ok=True)  # userspace WG leaves them when SIGKILLed
            if keep_tmp:
                self.say(f"kept logs in {self.tmp}")
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)
            self.say("cleaned up: processes stopped, namespaces deleted")
        finally:
            signal.signal(signal.SIGINT, old_int)


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_ns_pids(ns: str) -> None:
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


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError as e:
        return f"(cannot read {path}: {e})"
