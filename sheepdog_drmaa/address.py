"""Choosing the address workers reach the task server at, when ``host=`` is not given.

The default is this machine's fully qualified name. Where that name resolves only to loopback
(Debian maps a machine's own name to 127.0.1.1; a VM's to 127.0.0.1), workers on other hosts
could never reach it: then the address of the interface that routes to the execution hosts is
used instead, or, where no single address does, the sweep is refused with the host= to pass.
The route is found as the kernel would send to a node (a UDP socket's connect, no packet sent).
"""
from __future__ import annotations

import concurrent.futures
import functools
import ipaddress
import logging
import socket
from collections.abc import Callable, Mapping, Sequence

from .errors import ConfigurationError

log = logging.getLogger(__name__)

DISCARD_PORT = 9  # any port will do: connecting a UDP socket only picks the route
LOOKUPS_AT_ONCE = 16  # execution hosts' names resolved at once (each may wait on DNS)


def default_host(execution_hosts: Callable[[], Sequence[str] | None]) -> str:
    """The name or address workers are told to reach this machine at.

    ``execution_hosts`` lists the scheduler's execution hosts (None: not known); it is asked only
    when this machine's name resolves to loopback alone.
    """
    name = socket.getfqdn()
    own = addresses_of(name)
    if not own or not all(is_loopback(address) for address in own):
        return name
    hosts = execution_hosts()
    if hosts is None:
        warn_if_loopback(name)
        return name
    with concurrent.futures.ThreadPoolExecutor(max(1, min(len(hosts), LOOKUPS_AT_ONCE))) as pool:
        nodes = dict(zip(hosts, pool.map(addresses_of, hosts)))
    host = choose(name, own, nodes, route_source)
    if host != name:
        log.info("this machine's name %r resolves only to loopback (%s): workers will reach the server at %s, "
                 "this machine's address on the route to the execution hosts; pass host= to choose another",
                 name, ", ".join(own), host)
    return host


def choose(name: str, own: Sequence[str], nodes: Mapping[str, Sequence[str]],
           source_for: Callable[[str], str | None]) -> str:
    """``name`` if workers can reach it, else this machine's one address that routes to every other
    execution host; ConfigurationError when there is none. Pure: every fact is passed in.

    ``own``: what ``name`` resolves to; ``nodes``: each execution host's addresses (none when it does
    not resolve here: it cannot be judged, and is left out); ``source_for(address)``: this machine's
    address on the route to ``address`` (None without a route; the address itself when it is local).
    """
    if not own or not all(is_loopback(address) for address in own):
        return name
    routes: dict[str, str | None] = {}  # execution host on another machine -> our address towards it
    for node, addresses in nodes.items():
        sources = {address: None if is_loopback(address) else source_for(address) for address in addresses}
        if not addresses or any(is_loopback(a) or source == a for a, source in sources.items()):
            continue  # unknown here, or this very machine: loopback reaches it
        routes[node] = next(iter(sources.values()))
    if not routes:
        return name  # every execution host is this machine
    candidates = sorted({source for source in routes.values() if source is not None and not is_loopback(source)})
    if len(candidates) == 1 and all(source == candidates[0] for source in routes.values()):
        return candidates[0]
    detail = ", ".join(f"{node} via {source or 'no route'}" for node, source in sorted(routes.items()))
    suggestion = f"e.g. host={candidates[0]!r}" if candidates else "a name or address they can reach"
    raise ConfigurationError(
        f"this machine's name {name!r} resolves only to loopback ({', '.join(own)}), which workers on the execution "
        f"hosts cannot reach, and no single address of this machine routes to all of them ({detail}); pass host= "
        f"an address or name of this machine that every execution host can reach ({suggestion})")


def addresses_of(name: str) -> list[str]:
    """The addresses ``name`` resolves to here, in resolver order without repeats; [] when it does not."""
    try:
        found = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    return list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in found))


def route_source(address: str) -> str | None:
    """This machine's address on the route to ``address`` (no packet is sent); None without a route."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((address, DISCARD_PORT))
            return str(probe.getsockname()[0]).split("%")[0]
    except OSError:
        return None


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


@functools.cache  # once per host and process
def warn_if_loopback(host: str) -> None:
    """Workers on other nodes cannot reach a loopback address (Debian maps its own name to 127.0.1.1)."""
    addresses = addresses_of(host)
    if addresses and all(is_loopback(address) for address in addresses):
        log.warning("host=%r resolves only to the loopback address %s: workers on other nodes cannot reach the "
                    "server. Fine on a one-node cluster; otherwise pass host= a name or address of this machine "
                    "on the cluster network.", host, ", ".join(addresses))
