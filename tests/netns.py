"""Other machines for the tests: network namespaces, each with its own loopback and a veth pair to this host.

Inside a namespace "127.0.0.1" is that namespace's own loopback, as on a real second machine; the only way out
is its veth, whose host end has an address this module gave it. Traffic goes only to those addresses. Needs
root and iproute2 (``ip``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Machine:
    """A namespace: its name, its own address, and the host's address on its link."""

    namespace: str
    address: str
    host_address: str

    def command(self, *argv: str) -> list[str]:
        """``argv`` run inside this machine's namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]


def can_make_machines() -> str | None:
    """None if this process can make namespaces, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def _free_subnet() -> int:
    """A third octet n such that 10.231.n.0/24 is on no interface of this host."""
    taken = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    for _ in range(100):
        n = secrets.randbelow(250) + 1
        if f" 10.231.{n}." not in taken:
            return n
    raise RuntimeError("no free 10.231.n.0/24 subnet")


@contextmanager
def machines(count: int) -> Iterator[list[Machine]]:
    """``count`` namespaces, each linked to this host by a veth pair of its own; all removed at the end."""
    tag = secrets.token_hex(3)
    made: list[Machine] = []
    links: list[str] = []
    try:
        for i in range(count):
            n = _free_subnet()
            namespace, host_end, inner_end = f"kc-{tag}-{i}", f"kch{tag}{i}", f"kcn{tag}{i}"
            _ip("netns", "add", namespace)
            machine = Machine(namespace, f"10.231.{n}.2", f"10.231.{n}.1")
            made.append(machine)
            _ip("link", "add", host_end, "type", "veth", "peer", "name", inner_end)
            links.append(host_end)
            _ip("link", "set", inner_end, "netns", namespace)
            _ip("addr", "add", f"{machine.host_address}/24", "dev", host_end)
            _ip("link", "set", host_end, "up")
            for args in (
                ("addr", "add", f"{machine.address}/24", "dev", inner_end),
                ("link", "set", inner_end, "up"),
                ("link", "set", "lo", "up"),
                # Every host address (the other machines' links too) is reached through this link.
                ("route", "add", "default", "via", machine.host_address),
            ):
                _ip("-n", namespace, *args)
        yield made
    finally:
        for machine in made:
            # Deleting the namespace deletes its veth end, and with it the host's end.
            subprocess.run(["ip", "netns", "del", machine.namespace], capture_output=True, timeout=30)
        for link in links:  # gone with its namespace, unless making it failed halfway
            subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=30)
