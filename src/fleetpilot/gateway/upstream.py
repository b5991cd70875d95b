"""The one seam between the gateway and a replica: ``Upstream.send``.

It speaks HTTP to any OpenAI-compatible server (vLLM, TGI, the emulator) and turns every way
a replica can fail into one of the error types in :mod:`fleetpilot.errors`, so the caller
decides what to do by type alone.  A 4xx is not a replica failure: it comes back as a normal
response for the client to see.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from fleetpilot.errors import ReplicaGone, UpstreamStatus, UpstreamTimeout, UpstreamUnavailable

__all__ = ["Upstream", "UpstreamResponse"]

_CONNECTION_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError)
_JSON = {"Content-Type": "application/json"}


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    content_type: str
    _resp: aiohttp.ClientResponse
    _where: str

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except (TimeoutError, *_CONNECTION_ERRORS) as exc:
            raise ReplicaGone(f"{self._where} failed while answering: {exc!r}") from exc
        finally:
            self._resp.release()

    async def events(self) -> AsyncIterator[bytes]:
        """The ``data:`` payloads of a server-sent event stream, as raw bytes.

        Ends after ``[DONE]`` or at a clean end of stream; a broken or stalled stream raises
        :class:`ReplicaGone`.
        """
        content = self._resp.content
        try:
            while True:
                line = await content.readline()
                if not line:
                    return
                if line.startswith(b"data:"):
                    payload = line[5:].strip()
                    yield payload
                    if payload == b"[DONE]":
                        return
        except (TimeoutError, *_CONNECTION_ERRORS) as exc:
            raise ReplicaGone(f"{self._where} broke off its stream: {exc!r}") from exc

    def close(self) -> None:
        """Drop the connection (a replica stops generating for a client that went away)."""
        if not self._resp.closed:
            self._resp.close()


class Upstream:
    def __init__(
        self,
        *,
        connect_timeout: float = 2.0,
        read_timeout: float = 60.0,
        limit_per_host: int = 512,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.limit_per_host = limit_per_host
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=self.limit_per_host, keepalive_timeout=30, ttl_dns_cache=300
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=self.connect_timeout, sock_read=self.read_timeout
            ),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Upstream.start() was not awaited")
        return self._session

    async def send(
        self,
        url: str,
        body: bytes,
        *,
        read_timeout: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> UpstreamResponse:
        """POST ``body`` to ``url``; returns once the status line and headers are in."""
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=self.connect_timeout,
            sock_read=self.read_timeout if read_timeout is None else read_timeout,
        )
        try:
            resp = await self.session.post(
                url, data=body, headers=headers or _JSON, timeout=timeout
            )
        except TimeoutError as exc:
            raise UpstreamTimeout(f"{url}: no answer in time") from exc
        except _CONNECTION_ERRORS as exc:
            raise UpstreamUnavailable(f"{url}: {exc!r}") from exc
        if resp.status >= 500:
            try:
                detail = (await resp.read())[:200].decode("utf-8", "replace")
            except (TimeoutError, *_CONNECTION_ERRORS):
                detail = ""
            finally:
                resp.release()
            raise UpstreamStatus(
                f"{url} answered {resp.status}: {detail}", upstream_status=resp.status
            )
        return UpstreamResponse(resp.status, resp.content_type, resp, url)

    async def get(self, url: str, timeout: float) -> tuple[int, bytes]:
        """A short GET (health checks, metric scrapes); connection errors are raised as-is."""
        t = aiohttp.ClientTimeout(total=timeout)
        async with self.session.get(url, timeout=t) as resp:
            return resp.status, await resp.read()
