"""Fuzzing both fronts: request lines, headers and JSON bodies built from the OpenAI request
schema with type and shape mutations.  Every case must get a complete HTTP response with a
2xx or 4xx status and a JSON body (an SSE stream for a 200 to ``stream: true``); the gateway
must stay up, and its file descriptors and in-flight counts must come back to where they were.

Bounded and seeded (``derandomize``): the same cases every run, a few thousand in all.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from typing import Any

import httptools
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import HOST, Emulators, fleet, gateway_process, metric

MODEL = "llama-3.1-8b"
CASES = 2000  # per front
API = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
BASES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi there"}],
        "max_tokens": 4,
    },
    "/v1/completions": {"model": MODEL, "prompt": "once upon", "max_tokens": 4},
    "/v1/embeddings": {"model": MODEL, "input": "hi"},
}
FIELDS = [
    "model", "messages", "prompt", "input", "max_tokens", "max_completion_tokens", "stream",
    "stream_options", "temperature", "top_p", "n", "stop", "user", "seed", "logprobs",
    "response_format", "tools", "tool_choice", "presence_penalty", "encoding_format",
]  # fmt: skip
HEADERS = [
    "x-fleetpilot-ttft-slo", "x-fleetpilot-service-class", "authorization", "content-type",
    "accept", "connection", "expect", "user-agent", "x-request-id", "host", "cookie",
]  # fmt: skip

leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from([MODEL, "user", "assistant", "system", "text", "image_url", ""]),
)
anything = st.recursive(
    leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
small_ints = st.integers(min_value=1, max_value=8)


@st.composite
def bodies(draw: st.DrawFn, path: str) -> bytes:
    """A body for ``path``: valid, mutated in type or shape, nested deep, or not JSON."""
    kind = draw(st.sampled_from(["valid"] * 3 + ["mutate"] * 4 + ["deep", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "deep":
        depth = draw(st.integers(min_value=1, max_value=3000))
        return (
            (b'{"model": "%s", "messages": ' % MODEL.encode()) + b"[" * depth + b"]" * depth + b"}"
        )
    body = json.loads(json.dumps(BASES.get(path, BASES["/v1/chat/completions"])))
    body["max_tokens"] = draw(small_ints)
    if draw(st.booleans()):
        body["stream"] = True
    if kind == "mutate":
        for _ in range(draw(st.integers(min_value=1, max_value=3))):
            op = draw(st.sampled_from(["set", "drop", "content", "message"]))
            name = draw(st.sampled_from(FIELDS))
            if op == "set":
                body[name] = draw(anything)
            elif op == "drop":
                body.pop(name, None)
            elif op == "content" and isinstance(body.get("messages"), list) and body["messages"]:
                first = body["messages"][0]
                if isinstance(first, dict):
                    first["content"] = draw(anything)
            elif op == "message" and isinstance(body.get("messages"), list):
                body["messages"].append(draw(anything))
        body = draw(st.sampled_from([body] * 8 + [[body], {"body": body}]))  # shape, last
    return json.dumps(body).encode()


header_value = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=24,
)
token_chars = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_",
    min_size=1,
    max_size=12,
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["POST"] * 12 + ["GET", "PUT", "DELETE", "OPTIONS", "PATCH"]))
    path = draw(
        st.sampled_from(API * 8 + ["/v1/models", "/health", "/admin/fleet", "/admin/drain", "/x"])
        | st.text(alphabet="/abcv1?=&%.", min_size=1, max_size=20).map(lambda p: "/" + p)
    )
    version = draw(st.sampled_from(["HTTP/1.1"] * 5 + ["HTTP/1.0"]))
    body = draw(bodies(path)) if method in ("POST", "PUT", "PATCH") else b""
    headers = [("Host", "gw"), ("Content-Type", "application/json")]
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 4]))):
        name = draw(st.sampled_from(HEADERS) | token_chars)
        value = draw(
            st.sampled_from(
                [
                    "0.5",
                    "2",
                    "inf",
                    "1e308",
                    "1_0",
                    "-1",
                    "batch",
                    "interactive",
                    "Bearer x",
                    "100-continue",
                    "close",
                    "keep-alive",
                    "",
                ]
            )
            | header_value
        )
        headers.append((name, value))
    head = f"{method} {path} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    head += f"Content-Length: {len(body)}\r\n\r\n"
    return head.encode("latin-1") + body


class _Reader:
    """llhttp callbacks for one final response (1xx interim answers are skipped)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.done = False

    def on_message_begin(self) -> None:
        self.headers, self.body = {}, bytearray()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        if self.status >= 200:
            self.done = True


def exchange(port: int, raw: bytes) -> _Reader:
    reader = _Reader()
    with socket.create_connection((HOST, port), timeout=15) as sock:
        sock.sendall(raw)
        while not reader.done:
            data = sock.recv(65536)
            if not data:  # a close-delimited body (HTTP/1.0) ends here
                framed = "content-length" in reader.headers or "chunked" in reader.headers.get(
                    "transfer-encoding", ""
                )
                reader.done = reader.status >= 200 and not framed
                break
            reader.parser.feed_data(data)
    return reader


def check(reader: _Reader, raw: bytes) -> None:
    where = raw[:300]
    assert reader.done, ("no complete response", where)
    assert 200 <= reader.status < 300 or 400 <= reader.status < 500, (reader.status, where)
    kind = reader.headers.get("content-type", "")
    if kind.startswith("text/event-stream"):
        assert reader.status == 200 and bytes(reader.body).rstrip().endswith(b"data: [DONE]"), where
    elif kind.startswith("text/plain") and raw.startswith(b"GET /metrics"):
        pass
    else:
        assert kind.startswith("application/json"), (kind, where)
        json.loads(bytes(reader.body))


def _fds(proc: psutil.Process) -> tuple[int, int, int]:
    """(file descriptors that are not TCP sockets, client sockets, upstream sockets beyond
    the one the health checks keep alive)."""
    conns = [c for c in proc.net_connections(kind="tcp") if c.status != psutil.CONN_LISTEN]
    listening = {c.laddr.port for c in proc.net_connections(kind="tcp") if c.status == "LISTEN"}
    clients = sum(1 for c in conns if c.laddr.port in listening)
    upstream = len(conns) - clients
    return proc.num_fds() - len(conns), clients, max(0, upstream - 1)


def _back(now: tuple[int, ...], baseline: tuple[int, ...]) -> bool:
    return all(a <= b for a, b in zip(now, baseline, strict=True))


def _in_flight(url: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        return metric(r.read().decode(), "fleetpilot_in_flight")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fast_lane", [True, False])
def test_fuzzed_requests_always_get_a_whole_2xx_or_4xx_answer(
    emulators: Emulators, tmp_path: Any, fast_lane: bool
) -> None:
    emu = emulators.start("A10G", time_scale=0.001)
    pools = [{"name": "p", "model": MODEL, "accelerator": "A10G", "replicas": [emu.url],
              "context_tokens": 64}]  # fmt: skip
    cfg = fleet(pools, fast_lane=fast_lane, time_scale=0.001, admin_token="fuzz-admin",
                upstream_idle_s=1.0, shed_factor=1e6)  # fmt: skip
    with gateway_process(cfg, tmp_path) as gw:
        port = int(gw.url.rsplit(":", 1)[1])
        proc = psutil.Process(gw.proc.pid)
        ok = BASES["/v1/chat/completions"]
        for _ in range(5):  # warm: the connections a quiet gateway keeps
            check(exchange(port, _post(ok)), b"warm-up")
        time.sleep(1.5)
        fds = _fds(proc)

        @settings(
            max_examples=CASES,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(requests())
        def case(raw: bytes) -> None:
            reader = exchange(port, raw)
            check(reader, raw)
            seen[reader.status // 100] = seen.get(reader.status // 100, 0) + 1

        seen: dict[int, int] = {}
        case()
        # the cases reach the replicas as well as the error paths
        assert seen.get(2, 0) > CASES // 10 and seen.get(4, 0) > CASES // 10, seen
        assert gw.proc.poll() is None, "the gateway died"
        check(exchange(port, _post(ok)), b"after")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if _back(_fds(proc), fds) and _in_flight(gw.url) == 0:
                break
            time.sleep(0.2)
        assert _in_flight(gw.url) == 0
        assert _back(_fds(proc), fds), (_fds(proc), fds)


def _post(body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(data)
    ) + data
