"""The address workers are given when host= is not: the choice itself, with its inputs passed in.
End to end (the nodes reach the server across the bridge) in test_multihost.py."""
from __future__ import annotations

import socket
from typing import NoReturn

import pytest

from sheepdog_drmaa import ConfigurationError, address

# Routes as the kernel would answer them: the submit host is 10.77.0.1 towards the bridge,
# 192.0.2.2 towards the rest; its own addresses route to themselves.
ROUTES = {"10.77.0.11": "10.77.0.1", "10.77.0.12": "10.77.0.1", "192.0.2.50": "192.0.2.2",
          "10.77.0.1": "10.77.0.1", "192.0.2.2": "192.0.2.2"}


def route(destination: str) -> str | None:
    return ROUTES.get(destination)


def test_a_name_that_resolves_to_a_routable_address_is_kept() -> None:
    assert address.choose("head.example", ["192.0.2.2"], {"node1": ["10.77.0.11"]}, route) == "head.example"


def test_a_loopback_name_is_kept_when_every_execution_host_is_this_machine() -> None:
    nodes = {"vm": ["127.0.0.1"], "alias": ["10.77.0.1"], "unresolved": []}
    assert address.choose("localhost", ["127.0.0.1"], nodes, route) == "localhost"


def test_a_loopback_name_gives_way_to_the_address_that_routes_to_the_other_hosts() -> None:
    nodes = {"vm": ["127.0.0.1"], "node1": ["10.77.0.11"], "node2": ["10.77.0.12"]}
    assert address.choose("localhost", ["127.0.0.1", "::1"], nodes, route) == "10.77.0.1"


def test_hosts_reached_from_different_addresses_are_refused_naming_a_host_to_pass() -> None:
    nodes = {"node1": ["10.77.0.11"], "far": ["192.0.2.50"]}
    with pytest.raises(ConfigurationError) as refused:
        address.choose("localhost", ["127.0.1.1"], nodes, route)
    message = str(refused.value)
    assert "host='10.77.0.1'" in message and "far via 192.0.2.2" in message and "127.0.1.1" in message


def test_a_host_without_a_route_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="node9 via no route"):
        address.choose("localhost", ["127.0.0.1"], {"node9": ["198.51.100.9"]}, route)


def test_the_route_source_is_this_machines_own_address_for_a_local_one() -> None:
    assert address.route_source("127.0.0.1") == "127.0.0.1"
    assert address.route_source("203.0.113.1") != "203.0.113.1"  # a route's source is never the far end


def test_a_machine_name_resolving_to_a_routable_address_never_asks_the_scheduler(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getfqdn", lambda: "head.example")
    monkeypatch.setattr(address, "addresses_of", lambda name: ["192.0.2.2"])

    def never() -> NoReturn:
        raise AssertionError("the execution hosts were listed although the name is routable")
    assert address.default_host(never) == "head.example"
