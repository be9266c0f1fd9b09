"""A network namespace joined to the test's own by a veth pair, whose traffic a test can cut.

A server started inside it (a PostgresCluster with `prefix=namespace.run_prefix`, listening on
`namespace.server_address`) is reached from the test's namespace like a host on the network.
`cut()` makes the namespace drop every packet in and out (nftables), as a dead switch or a
firewall does: no RST, no ICMP, so an open TCP connection just retransmits into the void. The
host's own firewall and routes are never touched; removing the namespace removes everything.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import subprocess
from collections.abc import Iterator

import pytest

TOOLS = ("ip", "nft")


def _run(*command: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")


class NetworkNamespace:
    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.name = f"leanhpo-{tag}"
        self.host_link, self.inner_link = f"lh{tag}a", f"lh{tag}b"
        subnet = f"10.{random.randint(64, 127)}.{random.randint(0, 255)}"  # a /30 of its own
        self.host_address, self.server_address = f"{subnet}.1", f"{subnet}.2"
        self.run_prefix = ("ip", "netns", "exec", self.name)

    def create(self) -> None:
        _run("ip", "netns", "add", self.name)
        inside = self.run_prefix
        _run("ip", "link", "add", self.host_link, "type", "veth", "peer", "name", self.inner_link)
        _run("ip", "link", "set", self.inner_link, "netns", self.name)
        _run("ip", "addr", "add", f"{self.host_address}/30", "dev", self.host_link)
        _run("ip", "link", "set", self.host_link, "up")
        _run(*inside, "ip", "addr", "add", f"{self.server_address}/30", "dev", self.inner_link)
        _run(*inside, "ip", "link", "set", self.inner_link, "up")
        _run(*inside, "ip", "link", "set", "lo", "up")

    def cut(self) -> None:
        """Drop every packet that enters or leaves the namespace from now on."""
        inside = self.run_prefix
        _run(*inside, "nft", "add", "table", "inet", "cut")
        for hook in ("input", "output"):
            _run(
                *inside,
                "nft",
                f"add chain inet cut {hook} {{ type filter hook {hook} priority 0; }}",
            )
            _run(*inside, "nft", "add", "rule", "inet", "cut", hook, "drop")

    def heal(self) -> None:
        _run(*self.run_prefix, "nft", "delete", "table", "inet", "cut")

    def remove(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_link], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)


@pytest.fixture
def network_namespace() -> Iterator[NetworkNamespace]:
    if os.geteuid() != 0:
        pytest.skip("making a network namespace needs root (CAP_NET_ADMIN)")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not found: apt-get install -y iproute2 nftables")
    namespace = NetworkNamespace()
    try:
        namespace.create()
    except RuntimeError as error:  # a container without CAP_SYS_ADMIN cannot make one
        namespace.remove()
        pytest.skip(f"cannot make a network namespace here: {error}")
    try:
        yield namespace
    finally:
        namespace.remove()
