"""A lab with NAT between the nodes and the internet (Python 3.11, stdlib).

    <prefix>-lan   the "internet": bridge br0, 10.88.0.0/24
    <prefix>-srv   the coordination server (and its STUN responder), 10.88.0.1
    <prefix>-r1    home router 1: wan 10.88.0.21, lan 192.168.1.1/24
    <prefix>-r2    home router 2: wan 10.88.0.22, lan 192.168.2.1/24
    <prefix>-r3    a second network for n1 to roam to: wan 10.88.0.23,
                   lan 192.168.3.1/24
    <prefix>-n1    behind r1 (eth0 192.168.1.10); links into r3's network
                   (`eth1`) and into n2's (`eth2`, 192.168.2.11) stay down
                   until it roams there
    <prefix>-n2    behind r2 (eth0 192.168.2.10)

Each router masquerades its LAN out of its WAN interface with nftables and,
like a home router, drops what comes in unasked (no conntrack entry). Linux
masquerade keeps the source port when it is free and maps one socket to the
same public port whatever the destination: the endpoint-independent
mapping that hole punching needs; the filtering depends on the address
and port, so a peer's packets pass only after we sent to it first.

Other shapes (`NatLab(shape=...)`):
- "symmetric": r1 and r2 pick a random public port for every new
  destination (`masquerade random`), so what STUN sees is not what a peer
  would have to send to: no direct path exists.
- "udp-blocked": r1 drops all UDP its LAN sends out (only TCP, e.g. HTTPS,
  gets through), as some hotel and corporate networks do.
"""

from __future__ import annotations

import shutil

from lab import SUBNET, Lab, LabError, Skip, _run

ROUTERS = {"r1": ("21", "192.168.1"), "r2": ("22", "192.168.2"), "r3": ("23", "192.168.3")}
HOME = {"n1": "r1", "n2": "r2"}
ROAM_TO = "r3"

# What a home router does: forward and masquerade what the LAN starts,
# let back only the answers.
NFT_ROUTER = """
table inet fw {
    chain input {
        type filter hook input priority 0; policy drop;
        ct state established,related accept
        iifname { "lo", "lan0" } accept
    }
    chain forward {
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
        iifname "lan0" oifname "wan0" accept
        # Hosts on the LAN reach each other (bridged traffic comes through
        # here when the kernel filters bridges, br_netfilter).
        iifname "lan0" oifname "lan0" accept
    }
}
table ip nat {
    chain post {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan0" masquerade
    }
}
"""


SHAPES = ("eim", "symmetric", "udp-blocked")


def router_rules(router: str, shape: str) -> str:
    rules = NFT_ROUTER
    if shape == "symmetric" and router in ("r1", "r2"):
        rules = rules.replace('oifname "wan0" masquerade', 'oifname "wan0" masquerade random')
    if shape == "udp-blocked" and router == "r1":
        rules = rules.replace('        iifname "lan0" oifname "wan0" accept',
                              '        iifname "lan0" meta l4proto udp drop\n'
                              '        iifname "lan0" oifname "wan0" accept')
    return rules


class NatLab(Lab):
    def __init__(self, shape: str = "eim", **kw) -> None:
        if shape not in SHAPES:
            raise ValueError(f"unknown NAT shape {shape!r}; known: {SHAPES}")
        super().__init__(nodes=list(HOME), **kw)
        self.shape = shape
        self.router_ns = {r: f"{self.prefix}-{r}" for r in ROUTERS}

    def _preflight(self) -> None:
        super()._preflight()
        if shutil.which("nft") is None:
            raise Skip("`nft` (nftables) is not installed; tests/run-all.sh installs it")

    def start_relay(self, port: int) -> None:
        """`ztmesh relay` on its own in the server's namespace, over the
        server's data directory (CA, certificate, SQLite database)."""
        assert self.tmp is not None
        self.say(f"starting a standalone relay on {SUBNET}.1:{port}")
        self._spawn("relay", self.server_ns, [
            self.binary(), "relay", "--data-dir", str(self.tmp / "server"),
            "--listen", f"{SUBNET}.1:{port}"])

    def public_ip(self, router: str) -> str:
        return f"{SUBNET}.{ROUTERS[router][0]}"

    def lan_ip(self, node: str) -> str:
        """The node's address on its home network."""
        return f"{ROUTERS[HOME[node]][1]}.10"

    def _veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
        _run(["ip", "-n", ns_a, "link", "add", name_a, "type", "veth",
              "peer", "name", name_b, "netns", ns_b], timeout=10)

    def _build_network(self) -> None:
        self.say(f"creating namespaces {self.prefix}-{{lan,srv,r1,r2,r3,n1,n2}}")
        self._add_ns(self.lan_ns)
        lan = self.lan_ns
        _run(["ip", "-n", lan, "link", "add", "br0", "type", "bridge"], timeout=10)
        _run(["ip", "-n", lan, "link", "set", "br0", "up"], timeout=10)
        # The server sits on the internet itself.
        wan_members = [("srv", self.server_ns, f"{SUBNET}.1", "eth0")]
        wan_members += [(r, ns, self.public_ip(r), "wan0") for r, ns in self.router_ns.items()]
        for i, (_, ns, ip, dev) in enumerate(wan_members):
            self._add_ns(ns)
            port = f"p{i}"
            self._veth(lan, port, ns, dev)
            _run(["ip", "-n", lan, "link", "set", port, "master", "br0", "up"], timeout=10)
            _run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev], timeout=10)
            _run(["ip", "-n", ns, "link", "set", dev, "up"], timeout=10)
        for r, ns in self.router_ns.items():
            _run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"],
                 timeout=10)
            p = _run(["ip", "netns", "exec", ns, "nft", "-f", "-"], timeout=10, check=False,
                     input=router_rules(r, self.shape))
            if p.returncode != 0:
                raise LabError(f"nft in {r}: {p.stderr.strip()}")
        for r in self.router_ns:
            self._lan_bridge(r)
        for n, home in HOME.items():
            self._add_ns(self.node_ns[n])
            self._lan_link(n, home, "eth0", up=True)
        # n1's ways into the networks it moves to, down until then: another
        # network (r3), and n2's own (the office, say).
        self._lan_link("n1", ROAM_TO, "eth1", up=False)
        self._lan_link("n1", HOME["n2"], "eth2", up=False)

    def _lan_bridge(self, router: str) -> None:
        """The router's LAN: a bridge `lan0` holding its address."""
        rns = self.router_ns[router]
        _run(["ip", "-n", rns, "link", "add", "lan0", "type", "bridge"], timeout=10)
        _run(["ip", "-n", rns, "addr", "add", f"{ROUTERS[router][1]}.1/24", "dev", "lan0"],
             timeout=10)
        _run(["ip", "-n", rns, "link", "set", "lan0", "up"], timeout=10)

    def _lan_link(self, node: str, router: str, dev: str, up: bool) -> None:
        rns, nns = self.router_ns[router], self.node_ns[node]
        port = f"{node}{dev}"  # unique in the router's namespace
        self._veth(rns, port, nns, dev)
        _run(["ip", "-n", rns, "link", "set", port, "master", "lan0", "up"], timeout=10)
        if up:
            self._attach(node, router, dev)

    def _attach(self, node: str, router: str, dev: str) -> None:
        ns = self.node_ns[node]
        # A second host on n2's network takes the next address there.
        host = "11" if node != "n2" and router == HOME["n2"] else "10"
        _run(["ip", "-n", ns, "addr", "add", f"{ROUTERS[router][1]}.{host}/24", "dev", dev],
             timeout=10)
        _run(["ip", "-n", ns, "link", "set", dev, "up"], timeout=10)
        _run(["ip", "-n", ns, "route", "replace", "default", "via",
              f"{ROUTERS[router][1]}.1"], timeout=10)

    def roam(self, node: str = "n1", to: str = ROAM_TO) -> None:
        """Moves n1 from its home network to another (r3's by default: a
        new address behind a new NAT, as a laptop taken to another Wi-Fi;
        or n2's, as a laptop brought into the office)."""
        ns = self.node_ns[node]
        dev = "eth1" if to == ROAM_TO else "eth2"
        self.say(f"{node} roams from {HOME[node]} to {to}")
        _run(["ip", "-n", ns, "addr", "flush", "dev", "eth0"], timeout=10)
        _run(["ip", "-n", ns, "link", "set", "eth0", "down"], timeout=10)
        self._attach(node, to, dev)
