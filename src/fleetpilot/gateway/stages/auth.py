"""The auth stage: the caller must hold one of the configured client keys.

In the chain only when ``gateway.client_keys`` lists some; with none, every client may call
and the stage is not there at all.  The principal it records is the key's digest prefix,
which identifies a key in logs without being one.
"""

from __future__ import annotations

from fleetpilot.gateway.auth import ClientKeys
from fleetpilot.gateway.pipeline import Answer, Call, Handler, Stage
from fleetpilot.tenancy.registry import DEFAULT_TENANT, Principal

__all__ = ["auth_stage"]


def auth_stage(keys: ClientKeys) -> Stage:
    async def auth(call: Call, following: Handler) -> Answer:
        digest = keys.check(call.inbound.headers)
        call.principal = Principal(DEFAULT_TENANT, None, "key:" + digest[:8])
        return await following(call)

    return auth
