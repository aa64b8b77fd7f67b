"""The tunnels the benchmark compares, each brought up between two namespaces.

Every tunnel gives the address to send to in namespace B and the PIDs whose
CPU time counts as the tunnel's. The WireGuard implementations are all
configured the same way, with `wg set`; ztmesh is a server plus two
enrolled daemons under a large generated policy.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import policy_gen
from netlab import Netlab, Proc

OVERLAY_MTU = 1420


@dataclass
class Tunnel:
    """One tunnel under test, once it is up."""
    name: str
    dst_ip: str                      # address in namespace B the client sends to
    procs: list[Proc] = field(default_factory=list)   # CPU counted for these
    facts: dict = field(default_factory=dict)        # reported as-is


# --- the no-tunnel reference ----------------------------------------------------

def up_veth(lab: Netlab, index: int) -> Tunnel:
    return Tunnel("veth", lab.ip_b, facts={"mtu": lab.link_mtu(lab.ns_b, "eth0")})


# --- WireGuard implementations configured with `wg` -------------------------------

@dataclass(frozen=True)
class WgImpl:
    """How to start one WireGuard implementation as a foreground process."""
    name: str
    short: str                                   # interface name prefix (names are global:
    argv: tuple[str, ...] | None                 # the UAPI socket lives in /var/run/wireguard)
    env: tuple[tuple[str, str], ...] = ()        # None: kernel module, no process


def up_wireguard(lab: Netlab, index: int, impl: WgImpl, binary: str | None,
                 wrap_b: tuple[str, ...] = ()) -> Tunnel:
    """Starts impl on both sides and configures the pair with `wg set`;
    `wrap_b` prefixes side B's command (a profiler)."""
    subnet = f"10.{200 + index}.0"
    port = 51900 + index
    sides = [(lab.ns_a, "a", f"{subnet}.1", lab.ip_a), (lab.ns_b, "b", f"{subnet}.2", lab.ip_b)]
    keys = []
    for _ in sides:
        priv = lab.run(["wg", "genkey"]).stdout.strip()
        pub = lab.run(["wg", "pubkey"], input=priv + "\n").stdout.strip()
        keys.append((priv, pub))
    procs = []
    ifaces = []
    for ns, side, _, _ in sides:
        iface = f"{impl.short}{lab.suffix}{side}"[:15]
        ifaces.append(iface)
        if impl.argv is None:
            lab.run(["ip", "-n", ns, "link", "add", iface, "type", "wireguard"])
        else:
            args = [binary or impl.argv[0], *impl.argv[1:], iface]
            if side == "b":
                args = [*wrap_b, *args]
            p = lab.spawn(f"{impl.name}-{side}", ns, args, env=dict(impl.env))
            procs.append(p)
            sock = Path(f"/var/run/wireguard/{iface}.sock")
            lab.wait(lambda: sock.exists() or p.dead_error(), 60 if wrap_b else 15,
                     f"{impl.name} UAPI socket {sock}")
    for i, (ns, side, ovl, under) in enumerate(sides):
        other = sides[1 - i]
        priv_file = lab.tmp / f"{ifaces[i]}.key"
        priv_file.write_text(keys[i][0] + "\n")
        os.chmod(priv_file, 0o600)
        lab.run(["ip", "netns", "exec", ns, "wg", "set", ifaces[i], "private-key", str(priv_file),
                 "listen-port", str(port), "peer", keys[1 - i][1],
                 "endpoint", f"{other[3]}:{port}", "allowed-ips", f"{other[2]}/32"])
        lab.run(["ip", "-n", ns, "addr", "add", f"{ovl}/24", "dev", ifaces[i]])
        lab.run(["ip", "-n", ns, "link", "set", ifaces[i], "mtu", str(OVERLAY_MTU), "up"])
    t = Tunnel(impl.name, f"{subnet}.2", procs,
               facts={"interfaces": ifaces, "mtu": lab.link_mtu(lab.ns_b, ifaces[1]),
                      "argv": list(impl.argv or ["(kernel module)"])})
    return t


# --- ztmesh ---------------------------------------------------------------------------

# The relayed variant runs beside the direct one in the same namespaces:
# its own server (ports, overlay range), TUN, WireGuard port, and a firewall
# rule in both namespaces that drops WireGuard between the daemons, so the
# only way left is the server's relay (UDP, port RELAY_PORT).
RELAY_PORT = 8443
RELAYED_WG_PORT = 51821
NFT_NO_DIRECT = f"""
table inet ztbench {{
    chain input {{
        type filter hook input priority 0; policy accept;
        udp dport {RELAYED_WG_PORT} drop
    }}
}}
"""


def up_ztmesh(lab: Netlab, index: int, zt: str, relayed: bool = False,
              wrap_b: tuple[str, ...] = ()) -> Tunnel:
    """Server in namespace A, daemons in A and B, the generated policy in
    force; `relayed`: the direct path blocked, traffic through the relay;
    `wrap_b` prefixes daemon B's command (a profiler)."""
    tag = "zt-relay" if relayed else "zt"
    data = lab.tmp / f"{tag}-server"
    port = 7444 if relayed else 7443
    url = f"https://{lab.ip_a}:{port}"
    r = lab.run(["ip", "netns", "exec", lab.ns_a, zt, "server", "init", "--output", "json",
                 "--san", lab.ip_a, "--data-dir", str(data)], timeout=60)
    info = json.loads(r.stdout[r.stdout.find("{"):r.stdout.rfind("}") + 1])
    ca = lab.tmp / f"{tag}-ca.pem"
    ca.write_text(info["ca_cert"])
    admin_env = {"ZTMESH_SERVER": url, "ZTMESH_API_KEY": info["admin_key"],
                 "ZTMESH_CA_CERT": str(ca)}
    server_args = [zt, "server", "--data-dir", str(data), "--listen", f"{lab.ip_a}:{port}",
                   "--advertise-url", url]
    if relayed:
        server_args += ["--relay-listen", f"{lab.ip_a}:{RELAY_PORT}", "--stun-listen", "off",
                        "--metrics-listen", "off", "--overlay-cidr", "100.100.0.0/16"]
        for ns in (lab.ns_a, lab.ns_b):
            lab.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=NFT_NO_DIRECT)
    server = lab.spawn(f"{tag}-server", lab.ns_a, server_args)

    def admin(*args: str, timeout: float = 30):
        return lab.run(["ip", "netns", "exec", lab.ns_a, zt, "admin", *args], env=admin_env,
                       timeout=timeout)

    def server_ready():
        server.raise_if_dead()
        return lab.run(["ip", "netns", "exec", lab.ns_a, zt, "admin", "devices", "list"],
                       env=admin_env, timeout=5, check=False).returncode == 0
    lab.wait(server_ready, 30, "ztmesh server to answer admin requests")

    text, facts = policy_gen.generate()
    pol = lab.tmp / "bench-policy.toml"
    pol.write_text(text)
    t0 = time.monotonic()
    admin("policy", "set", str(pol), "-m", "benchmark policy", timeout=120)
    facts["policy_set_seconds"] = round(time.monotonic() - t0, 2)

    daemons = []
    names = ("relay-a", "relay-b") if relayed else ("bench-a", "bench-b")
    for ns, name, tags, wrap in ((lab.ns_a, names[0], policy_gen.CLIENT_TAGS, ()),
                                 (lab.ns_b, names[1], policy_gen.SERVER_TAGS, wrap_b)):
        args = ["join-token", "create", "--expires", "1h"]
        for tag in tags:
            args += ["--tag", tag]
        token = admin(*args).stdout.strip().splitlines()[-1].strip()
        # ZTMESH_UP_ARGS: extra `ztmesh up` flags (e.g. --no-tun-offload);
        # ZTMESH_LOG: the daemons' log filter (default warn).
        extra = os.environ.get("ZTMESH_UP_ARGS", "").split()
        if relayed:
            extra += ["--tun", "ztmesh1", "--listen-port", str(RELAYED_WG_PORT),
                      "--metrics-listen", "off", "--overlay-prefix", "16"]
        # The token in the environment: a command line is readable by
        # every local user in /proc.
        daemons.append(lab.spawn(name, ns, [*wrap, zt, "up", "--name", name,
                                            "--state-dir", str(lab.tmp / name), *extra],
                                 env={"ZTMESH_LOG": os.environ.get("ZTMESH_LOG", "warn"),
                                      "ZTMESH_JOIN_TOKEN": token}))

    def status(ns: str, name: str) -> dict:
        r = lab.run(["ip", "netns", "exec", ns, zt, "status", "--state-dir",
                     str(lab.tmp / name), "--output", "json"], timeout=10, check=False)
        if r.returncode != 0:
            return {}
        return json.loads(r.stdout[r.stdout.find("{"):r.stdout.rfind("}") + 1])

    def connected():
        for d in daemons:
            d.raise_if_dead()
        sa, sb = status(lab.ns_a, names[0]), status(lab.ns_b, names[1])
        if not (sa.get("control_connected") and sb.get("control_connected")
                and sa.get("policy_version") and sb.get("policy_version")
                and sa.get("peers") and sb.get("peers")):
            return None
        if relayed and not (sa.get("relay_connected") and sb.get("relay_connected")):
            return None
        return sb
    sb = lab.wait(connected, 300 if wrap_b else 60,
                  "both ztmesh daemons to connect and get the policy and a peer")
    dst = next(a.split("/")[0] for a in sb["addresses"] if ":" not in a)
    facts["policy_version"] = sb.get("policy_version")
    iface = "ztmesh1" if relayed else _tun_name(lab, lab.ns_b)
    facts["interface"] = iface
    facts["mtu"] = lab.link_mtu(lab.ns_b, iface) if iface else None
    tunnel = Tunnel("ztmesh-relay" if relayed else "ztmesh", dst, daemons, facts=facts)
    tunnel.status = lambda: status(lab.ns_b, names[1])  # type: ignore[attr-defined]
    if relayed:
        # Traffic makes the daemons find that no direct path answers.
        def on_relay():
            lab.run(["ip", "netns", "exec", lab.ns_a, "ping", "-c", "1", "-W", "1", dst],
                    check=False)
            st = status(lab.ns_a, names[0])
            paths = [p.get("path") for p in st.get("peers") or []]
            return paths == ["relay"] and st.get("relay_transport") == "udp"
        lab.wait(on_relay, 30, "the relayed ztmesh pair to use the relay over UDP")
        facts["relay"] = f"{lab.ip_a}:{RELAY_PORT} (in the server, namespace A), over UDP"
    return tunnel


def _tun_name(lab: Netlab, ns: str) -> str | None:
    out = lab.run(["ip", "-n", ns, "-j", "link", "show"], check=False).stdout
    for link in json.loads(out or "[]"):
        if link.get("ifname", "").startswith("ztmesh"):
            return link["ifname"]
    return None
