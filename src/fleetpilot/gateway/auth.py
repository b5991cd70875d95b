"""Who may call the gateway: clients holding an API key, operators holding the admin credential.

Both fronts ask the same two questions, here, once.  Client keys are kept as SHA-256
digests, so a fleet file that leaks does not leak keys; the admin credential is compared in
constant time.  With no admin credential configured, ``/admin/*`` answers only connections
from the loopback: a gateway started by hand on a laptop still works with the demo and a
local controller, and one exposed on a network cannot be taken over through it.

Tenant keys with budgets and limits replace :class:`ClientKeys` in the pipeline issue.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from fleetpilot.config import GatewayConfig
from fleetpilot.errors import Forbidden, Unauthorized

__all__ = ["ADMIN_ENV", "AdminAuth", "ClientKeys", "admin_token", "bearer", "hash_key"]

ADMIN_ENV = "FLEETPILOT_ADMIN_TOKEN"


def hash_key(key: str) -> str:
    """The digest ``client_keys`` lists for ``key``."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def bearer(headers: Any) -> str | None:
    """The token of an ``Authorization: Bearer …`` header, if there is one."""
    value = headers.get("authorization")  # both fronts' headers answer lower-case names
    if not isinstance(value, str):
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


@dataclass(frozen=True, slots=True)
class ClientKeys:
    """The API keys clients may use.  With none listed the auth stage is not in the chain
    (every client may call); :attr:`required` says which."""

    digests: tuple[str, ...] = ()

    @property
    def required(self) -> bool:
        return bool(self.digests)

    def check(self, headers: Any) -> str:
        """The digest of the caller's key, if it is one of the keys (else Unauthorized)."""
        key = bearer(headers)
        if key is None:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        digest = hash_key(key)
        if not any(hmac.compare_digest(digest.encode(), d.encode()) for d in self.digests):
            raise Unauthorized("invalid API key")
        return digest


def admin_token(
    configured: SecretStr | None, environ: Mapping[str, str] = os.environ
) -> str | None:
    """The admin credential: the configured one, else ``$FLEETPILOT_ADMIN_TOKEN`` (the
    gateway's to ask for, the controller's to send)."""
    if configured is not None:
        return configured.get_secret_value()
    return environ.get(ADMIN_ENV) or None


def _loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        ip = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False  # a Unix socket path or something stranger: not provably local
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return (mapped or ip).is_loopback


@dataclass(frozen=True, slots=True)
class AdminAuth:
    """The credential ``/admin/*`` asks for (``None``: loopback connections only)."""

    token: str | None = None

    @classmethod
    def from_config(
        cls, config: GatewayConfig, environ: Mapping[str, str] = os.environ
    ) -> AdminAuth:
        return cls(admin_token(config.admin_token, environ))

    def check(self, headers: Any, remote: str | None) -> None:
        if self.token is None:
            if not _loopback(remote):
                raise Forbidden(
                    "admin endpoints answer only loopback connections when no admin token "
                    "is configured"
                )
            return
        given = (bearer(headers) or "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, self.token.encode("utf-8")):
            raise Unauthorized("admin credential missing or wrong")
