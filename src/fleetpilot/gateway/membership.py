"""Replica membership over HTTP: the gateway half of
:class:`~fleetpilot.controller.observe.HttpMembership`.

A gateway in its own process learns replica membership from a controller over two admin
endpoints, added to the gateway's app by :func:`add_membership_routes`::

    POST /admin/replicas          {"id", "pool", "model", "url", "accelerator",
                                   "capacity_class", "state"?, "price_per_hour"?, "profile"?}
                                  -> 201 {"replica": id}; 409 if the id is already a member
    POST /admin/replicas/remove   {"replica": id or url} -> 200 {"replica": id}

State changes after that use the gateway's existing ``/admin/drain`` (draining) and
``/admin/undrain`` (ready).  Like every ``/admin/*`` endpoint these need the admin credential
(:mod:`fleetpilot.gateway.auth`).  A URL is a base URL and nothing more (no path, query or
user: :func:`~fleetpilot.config.replica_url`), and its host must resolve into the gateway's
``replica_networks``: a replica receives clients' prompts and the pool's upstream key.
Offering and profile come from the gateway's catalogue, exactly as for a pool in its fleet
file, so price and performance agree with the controller's.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from fleetpilot.catalogue import Catalogue
from fleetpilot.config import in_networks, replica_url
from fleetpilot.core.model import CapacityClass, Replica, ReplicaState
from fleetpilot.engines import ENGINES
from fleetpilot.errors import ApiError, BadRequest, ConfigError
from fleetpilot.gateway.appkeys import CONFIG, FLEET

__all__ = ["add_membership_routes", "replica_from_json"]


class _Conflict(ApiError):
    status = 409
    type = "invalid_request_error"


def replica_from_json(body: Any, catalogue: Catalogue) -> Replica:
    """A ``Replica`` from the ``POST /admin/replicas`` body; raises ``BadRequest``."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    try:
        rid, pool, model, url = (str(body[k]) for k in ("id", "pool", "model", "url"))
        accelerator = str(body["accelerator"])
        cls = CapacityClass(body.get("capacity_class", "on_demand"))
        state = ReplicaState(body.get("state", "ready"))
        engine = str(body.get("engine", "auto"))
        if engine != "auto" and engine not in ENGINES:
            raise BadRequest(f"unknown engine {engine!r}", param="engine")
        known_as = str(body.get("profile") or model)
        offering = catalogue.offering(known_as, accelerator, cls)
        profile = replace(catalogue.profile(known_as, accelerator), model=model)
        price = body.get("price_per_hour")
    except KeyError as exc:
        raise BadRequest(f"missing field {exc.args[0]!r}", param=str(exc.args[0])) from None
    except (ValueError, ConfigError) as exc:
        raise BadRequest(str(exc)) from None
    if price is not None:
        if not isinstance(price, int | float) or price <= 0:
            raise BadRequest("price_per_hour must be a positive number", param="price_per_hour")
        offering = replace(offering, price_per_hour=float(price))
    try:
        url = replica_url(url)
    except ValueError as exc:
        raise BadRequest(str(exc), param="url") from None
    if state is ReplicaState.GONE:
        raise BadRequest("a new member cannot be gone", param="state")
    return Replica(rid, pool, model, url, offering, profile, state=state, engine=engine)


async def _addresses(url: str) -> list[str]:
    """The IP addresses ``url``'s host stands for (itself, if it is one)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, parts.port or 80, type=socket.SOCK_STREAM
        )
    except OSError:
        return []
    return sorted({str(info[4][0]) for info in infos})


def add_membership_routes(
    post: Callable[[str, Callable[[web.Request], Awaitable[web.Response]]], object],
    catalogue: Catalogue,
) -> None:
    """Register ``POST /admin/replicas`` and ``POST /admin/replicas/remove`` with ``post``
    (the gateway app's route adder, while ``create_app`` builds it)."""

    async def add(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            raise BadRequest("the body is not valid JSON") from None
        replica = replica_from_json(body, catalogue)
        networks = request.app[CONFIG].gateway.replica_networks
        if not in_networks(await _addresses(replica.url), networks):
            raise BadRequest(
                "the replica's host does not resolve into the gateway's replica_networks",
                param="url",
            )
        fleet = request.app[FLEET]
        if fleet.find(replica.id) is not None:
            raise _Conflict(f"replica {replica.id!r} is already a member", param="id")
        fleet.add(replica)
        return web.json_response({"replica": replica.id}, status=201)

    async def remove(request: web.Request) -> web.Response:
        try:
            key = str((await request.json())["replica"])
        except (ValueError, KeyError, TypeError):
            raise BadRequest('body must be {"replica": "<id or url>"}') from None
        fleet = request.app[FLEET]
        live = fleet.find(key)
        if live is None:
            raise BadRequest(f"no replica {key!r}", param="replica")
        fleet.remove(live.id)
        return web.json_response({"replica": live.id})

    post("/admin/replicas", add)
    post("/admin/replicas/remove", remove)
