"""The one seam between the gateway and a replica: ``Upstream.send``.

It speaks HTTP to any OpenAI-compatible server (vLLM, TGI, the emulator) and turns every way
a replica can fail into one of the error types in :mod:`fleetpilot.errors`, so the caller
decides what to do by type alone.  A 4xx is not a replica failure: it comes back as a normal
response for the client to see.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fleetpilot.errors import ReplicaGone, UpstreamStatus, UpstreamTimeout, UpstreamUnavailable
from fleetpilot.gateway.http1 import Http1Client, Http1Response

__all__ = ["Upstream", "UpstreamResponse"]

_CONNECTION_ERRORS = (OSError,)  # ConnectionError, ssl.SSLError, http1.BadResponse
_JSON = {"Content-Type": "application/json"}


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    content_type: str
    _resp: Http1Response
    _where: str

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except (TimeoutError, *_CONNECTION_ERRORS) as exc:
            raise ReplicaGone(
                "the replica failed while answering", detail=f"{self._where}: {exc!r}"
            ) from exc

    async def events(self) -> AsyncIterator[bytes]:
        """The ``data:`` payloads of a server-sent event stream, as raw bytes.

        Ends after ``[DONE]`` or at a clean end of stream; a broken or stalled stream raises
        :class:`ReplicaGone`.
        """
        resp = self._resp
        try:
            while True:
                line = await resp.readline()
                if not line:
                    return
                if line.startswith(b"data:"):
                    payload = line[5:].strip()
                    yield payload
                    if payload == b"[DONE]":
                        return
        except (TimeoutError, *_CONNECTION_ERRORS) as exc:
            raise ReplicaGone(
                "the replica broke off its stream", detail=f"{self._where}: {exc!r}"
            ) from exc

    def divert(self, listener: Callable[[bytes], bool] | None) -> None:
        """Events to ``listener`` as they arrive, bypassing :meth:`events` for each one it
        takes (see :meth:`~fleetpilot.gateway.http1.Http1Response.divert`)."""
        self._resp.divert(listener)

    def close(self) -> None:
        """Drop the connection (a replica stops generating for a client that went away);
        one read to its end is handed back for reuse instead."""
        self._resp.release()


class Upstream:
    def __init__(
        self,
        *,
        connect_timeout: float = 2.0,
        read_timeout: float = 60.0,
        limit_per_host: int = 512,
        idle_s: float = 30.0,
    ) -> None:
        self.idle_s = idle_s
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.limit_per_host = limit_per_host
        self._client: Http1Client | None = None

    async def start(self) -> None:
        self._client = Http1Client(
            connect_timeout=self.connect_timeout,
            limit_per_host=self.limit_per_host,
            keepalive_s=self.idle_s,
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    @property
    def client(self) -> Http1Client:
        if self._client is None:
            raise RuntimeError("Upstream.start() was not awaited")
        return self._client

    async def send(
        self,
        url: str,
        body: bytes,
        *,
        read_timeout: float | None = None,
        first_byte_timeout: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> UpstreamResponse:
        """POST ``body`` to ``url``; returns once the status line and headers are in.

        ``first_byte_timeout`` (default ``read_timeout``) bounds the wait for the head: an
        engine that queues a request sends nothing until its first token.  ``read_timeout``
        is the silence allowed after that."""
        silence = self.read_timeout if read_timeout is None else read_timeout
        timeout = silence if first_byte_timeout is None else first_byte_timeout
        try:
            resp = await self.client.request(
                "POST", url, body, headers or _JSON, read_timeout=timeout
            )
        except TimeoutError as exc:
            raise UpstreamTimeout("a replica did not answer in time", detail=url) from exc
        except _CONNECTION_ERRORS as exc:
            raise UpstreamUnavailable(
                "a replica could not be reached", detail=f"{url}: {exc!r}"
            ) from exc
        if resp.status >= 500:
            try:
                detail = (await resp.read())[:200].decode("utf-8", "replace")
            except (TimeoutError, *_CONNECTION_ERRORS):
                detail = ""
            raise UpstreamStatus(
                f"a replica failed with status {resp.status}",
                upstream_status=resp.status,
                detail=f"{url}: {detail}",
            )
        resp.read_timeout(silence)
        return UpstreamResponse(resp.status, resp.content_type, resp, url)

    async def get(self, url: str, timeout: float) -> tuple[int, bytes]:
        """A short GET (health checks, metric scrapes); connection errors are raised as-is."""
        async with asyncio.timeout(timeout):
            resp = await self.client.request("GET", url, read_timeout=timeout)
            return resp.status, await resp.read()
