"""Bulk TCP through the overlay: megabytes in large writes, so that the
kernel hands the daemons TSO super-packets and the daemons hand the
receiving kernel GRO-coalesced ones. The listener echoes every byte back,
so both directions carry bulk data; the client checks that what came back
is, byte for byte, what it sent (a segmentation or checksum bug shows here,
not in one-line echoes).
"""

from __future__ import annotations

import secrets
import signal
import sys

from lab import Lab, LabError, _readline

_BULK_LISTEN_SRC = r"""
import socket, sys
ip, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind((ip, port))
    s.listen(1)
except OSError as e:
    print("BINDFAIL %s" % e, flush=True)
    sys.exit(3)
print("READY", flush=True)
s.settimeout(timeout)
try:
    c, _ = s.accept()
    c.settimeout(timeout)
    while True:
        chunk = c.recv(1 << 16)
        if not chunk:
            break
        c.sendall(chunk)
    c.close()
except OSError:
    sys.exit(1)
"""

_BULK_CONNECT_SRC = r"""
import hashlib, os, socket, sys, threading, time
ip, port, timeout, size, seed = (sys.argv[1], int(sys.argv[2]), float(sys.argv[3]),
                                 int(sys.argv[4]), sys.argv[5])
block = hashlib.sha256(seed.encode()).digest() * 2048 + os.urandom(64 * 1024)
sent = hashlib.sha256()
failure = []
def send(c):
    try:
        left = size
        i = 0
        while left > 0:
            piece = block[i % 4096:][:min(left, 256 * 1024)]
            c.sendall(piece)
            sent.update(piece)
            left -= len(piece)
            i += 7
        c.shutdown(socket.SHUT_WR)
    except OSError as e:
        failure.append("send: %s" % e)
try:
    c = socket.create_connection((ip, port), timeout=timeout)
    c.settimeout(timeout)
    t0 = time.monotonic()
    t = threading.Thread(target=send, args=(c,))
    t.start()
    got = hashlib.sha256()
    n = 0
    while True:
        chunk = c.recv(1 << 16)
        if not chunk:
            break
        got.update(chunk)
        n += len(chunk)
    t.join()
    dt = time.monotonic() - t0
except OSError as e:
    print("connect: %s" % e)
    sys.exit(1)
if failure:
    print(failure[0])
    sys.exit(1)
if n != size or got.digest() != sent.digest():
    print("echo differs: %d of %d bytes back, sha256 %s" % (n, size, "equal" if got.digest() == sent.digest() else "different"))
    sys.exit(2)
print("bulk ok: %d bytes each way in %.2f s (%.0f Mbit/s each way)" % (size, dt, size * 8 / dt / 1e6))
"""


def tcp_bulk(lab: Lab, src: str, dst: str, ip: str, port: int, size: int,
             timeout: float = 20.0) -> tuple[bool, str]:
    """Sends `size` bytes from src to a listener at ip:port in dst, which
    echoes them; returns (intact, the client's line)."""
    listener = lab._spawn(f"bulk-{dst}-{port}", lab.ns_of(dst),
                          [sys.executable, "-u", "-c", _BULK_LISTEN_SRC, ip, str(port),
                           str(timeout)], log=False, stdout_pipe=True)
    try:
        line = _readline(listener.popen, 10.0)
        if line != "READY":
            raise LabError(f"bulk listener in {dst} on {ip}:{port} failed: {line or 'no output'}")
        r = lab.exec_in(lab.ns_of(src), [sys.executable, "-c", _BULK_CONNECT_SRC, ip, str(port),
                                         str(timeout), str(size), secrets.token_hex(8)],
                        timeout=timeout + 10)
        out = (r.stdout or r.stderr or "").strip()
        return r.returncode == 0, out
    finally:
        lab._stop_proc(listener, sig=signal.SIGKILL, grace=2.0)
