"""The auth stage: the caller must hold one of the configured client keys.

In the chain only when ``gateway.client_keys`` lists some; with none, every client may call
and the stage is not there at all.  The principal it records is the key's digest prefix,
which identifies a key in logs without being one.
"""

from __future__ import annotations

from fleetpilot.gateway.auth import ClientKeys
from fleetpilot.gateway.pipeline import Answer, Call, Handler, Stage

__all__ = ["auth_stage"]


def auth_stage(keys: ClientKeys) -> Stage:
    async def auth(call: Call, following: Handler) -> Answer:
        call.principal = "key:" + keys.check(call.inbound.headers)[:8]
        return await following(call)

    return auth
