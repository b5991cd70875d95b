"""The Kubernetes actuator against a fake API server on 127.0.0.1 (aiohttp, TLS, bearer token).

No real API server can run here (no container runtime, no kube-apiserver), so the fake
answers like one for the few calls the actuator makes, and checks every body it receives
against the Kubernetes API's published OpenAPI schemas (a subset extracted into
``tests/data/k8s-openapi-subset.json``, source and commit recorded in it): types, formats,
required fields, apiVersion/kind, and no field the schema does not know (the API server's
strict field validation).  Its own answers (pod and node lists) are checked the same way, so
the fake cannot drift from the real shapes either.  A tiny ReplicaSet stand-in creates and
deletes pods the way the real one ranks them: not ready first, then lower
``pod-deletion-cost``, then newest.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from fleetpilot.catalogue import load_catalogue
from fleetpilot.clock import SystemClock
from fleetpilot.controller import Controller
from fleetpilot.controller.actuators.kubernetes import (
    DELETION_COST,
    DRAINING,
    KubeApiError,
    KubeClient,
    KubeConfig,
    KubeOptions,
    KubernetesActuator,
    default_instance_types,
    deployment_manifest,
    deployment_name,
    dns1123,
    scale_body,
)
from fleetpilot.core.capacity import Plan, PlanParams
from fleetpilot.core.model import CapacityClass, Demand, Pool, ReplicaState, Snapshot

from conftest import HOST

MODEL = "llama-3.1-8b"
SPEC = json.loads((Path(__file__).parent / "data" / "k8s-openapi-subset.json").read_text())
SCHEMAS: dict[str, Any] = SPEC["components"]["schemas"]
DEPLOYMENT = "io.k8s.api.apps.v1.Deployment"
SCALE = "io.k8s.api.autoscaling.v1.Scale"
POD = "io.k8s.api.core.v1.Pod"
POD_LIST = "io.k8s.api.core.v1.PodList"
NODE_LIST = "io.k8s.api.core.v1.NodeList"
STATUS = "io.k8s.apimachinery.pkg.apis.meta.v1.Status"
BODY = web.RequestKey("body", object)
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------------------------------
# A small OpenAPI v3 checker: $ref, allOf, oneOf, type, format, properties (strict),
# additionalProperties, items, required, and apiVersion/kind from x-kubernetes-group-version-kind


@dataclass
class Checker:
    errors: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)

    def check(self, value: Any, name: str, *, partial: bool = False) -> Checker:
        schema = SCHEMAS[name]
        for gvk in schema.get("x-kubernetes-group-version-kind", [])[:1]:
            api = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
            for key, want in (("apiVersion", api), ("kind", gvk["kind"])):
                if (key in value or not partial) and value.get(key) != want:
                    self.errors.append(f"{key}: {value.get(key)!r}, expected {want!r}")
        self._walk(value, schema, name, partial)
        return self

    def _walk(self, value: Any, schema: Mapping[str, Any], path: str, partial: bool) -> None:
        if "$ref" in schema:
            target = schema["$ref"].rsplit("/", 1)[1]
            self._walk(value, SCHEMAS[target], path, partial)
            return
        if "x-fleetpilot-pruned" in schema:
            self.pruned.append(f"{path} ({schema['x-fleetpilot-pruned']})")
            return
        for sub in schema.get("allOf", ()):
            self._walk(value, sub, path, partial)
        if "oneOf" in schema:
            matches = 0
            for sub in schema["oneOf"]:
                probe = Checker()
                probe._walk(value, sub, path, partial)
                matches += not probe.errors
            if matches != 1:
                self.errors.append(f"{path}: {value!r} matches {matches} of oneOf")
        kind = schema.get("type")
        if kind is not None and not _is(value, kind):
            self.errors.append(f"{path}: {value!r} is not {kind}")
            return
        fmt = schema.get("format")
        if fmt == "int32" and not -(2**31) <= value < 2**31:
            self.errors.append(f"{path}: {value} is out of int32")
        if fmt == "date-time":
            try:
                datetime.fromisoformat(value)
            except (TypeError, ValueError):
                self.errors.append(f"{path}: {value!r} is not an RFC 3339 date-time")
        if kind == "array":
            for i, item in enumerate(value):
                self._walk(item, schema.get("items", {}), f"{path}[{i}]", partial)
        if kind == "object":
            props = schema.get("properties", {})
            extra = schema.get("additionalProperties")
            for key, item in value.items():
                if key in props:
                    self._walk(item, props[key], f"{path}.{key}", partial)
                elif isinstance(extra, dict):
                    self._walk(item, extra, f"{path}[{key}]", partial)
                else:
                    self.errors.append(f"{path}: unknown field {key!r}")
            if not partial:
                for key in schema.get("required", ()):
                    if key not in value:
                        self.errors.append(f"{path}: missing required field {key!r}")


def _is(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    types = {"string": str, "boolean": bool, "array": list, "object": dict}
    return isinstance(value, types[kind])


def test_checker_catches_what_the_api_server_would_reject() -> None:
    pool = catalogue_pool(CapacityClass.ON_DEMAND)
    good = deployment_manifest(pool, 2, KubeOptions())
    assert Checker().check(good, DEPLOYMENT).errors == []
    bad = json.loads(json.dumps(good))
    bad["spec"]["replicas"] = "2"
    bad["spec"]["template"]["spec"]["nodeSelecter"] = {}
    del bad["spec"]["selector"]
    bad["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["x"] = [1]
    bad["kind"] = "Deploymnet"
    errors = Checker().check(bad, DEPLOYMENT).errors
    assert any("is not integer" in e for e in errors)
    assert any("unknown field 'nodeSelecter'" in e for e in errors)
    assert any("missing required field 'selector'" in e for e in errors)
    assert any("matches 0 of oneOf" in e for e in errors)
    assert any(e.startswith("kind:") for e in errors)
    assert Checker().check({"spec": {"replicas": 1}}, SCALE, partial=True).errors == []
    assert Checker().check({"spec": {"replicas": 2**31}}, SCALE, partial=True).errors


# ---------------------------------------------------------------------------------------------
# The fake API server


def catalogue_pool(cls: CapacityClass, acc: str = "A10G") -> Pool:
    (pool,) = load_catalogue().pools(MODEL, [acc], (cls,))
    return pool


def status(code: int, reason: str, message: str) -> web.Response:
    body = {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure" if code >= 400 else "Success",
        "message": message,
        "reason": reason,
        "code": code,
    }
    assert Checker().check(body, STATUS).errors == []
    return web.json_response(body, status=code)


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any


class FakeApiServer:
    """Answers like the API server for Deployments, their scale, Pods and Nodes."""

    def __init__(self, token: str, namespace: str = "serving") -> None:
        self.token = token
        self.ns = namespace
        self.requests: list[Recorded] = []
        self.checks: list[tuple[str, Checker]] = []
        self.deployments: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, dict[str, Any]] = {}
        self.nodes: dict[str, dict[str, Any]] = {}
        self._t0 = datetime(2025, 1, 1, tzinfo=UTC)
        self._n = 0
        self.app = web.Application(middlewares=[self._auth])
        ns = "/namespaces/{ns}"
        self.app.router.add_post("/apis/apps/v1" + ns + "/deployments", self._create)
        self.app.router.add_get("/apis/apps/v1" + ns + "/deployments/{name}", self._get_dep)
        self.app.router.add_patch("/apis/apps/v1" + ns + "/deployments/{name}/scale", self._scale)
        self.app.router.add_get("/api/v1" + ns + "/pods", self._list_pods)
        self.app.router.add_get("/api/v1" + ns + "/pods/{name}", self._get_pod)
        self.app.router.add_patch("/api/v1" + ns + "/pods/{name}", self._patch_pod)
        self.app.router.add_delete("/api/v1" + ns + "/pods/{name}", self._delete_pod)
        self.app.router.add_get("/api/v1/nodes", self._list_nodes)

    # -- test controls ---------------------------------------------------------------------------
    def add_node(self, name: str, labels: dict[str, str]) -> None:
        self.nodes[name] = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": labels, "uid": f"uid-{name}"},
            "spec": {"providerID": f"aws:///us-east-1a/i-{name}"},
            "status": {
                "capacity": {"nvidia.com/gpu": "1", "cpu": "4", "memory": "16Gi"},
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }

    def taint(self, node: str, key: str) -> None:
        taint = {"key": key, "effect": "NoSchedule", "timeAdded": self._stamp()}
        self.nodes[node]["spec"].setdefault("taints", []).append(taint)

    def make_ready(self, ip: str = HOST) -> None:
        for pod in self.pods.values():
            if pod["spec"].get("nodeName"):
                pod["status"] = {
                    "phase": "Running",
                    "podIP": ip,
                    "podIPs": [{"ip": ip}],
                    "conditions": [{"type": "Ready", "status": "True"}],
                    "startTime": pod["metadata"]["creationTimestamp"],
                }

    def bodies(self, method: str, suffix: str) -> list[Any]:
        return [r.body for r in self.requests if r.method == method and r.path.endswith(suffix)]

    def pods_of(self, deployment: str) -> list[str]:
        if deployment not in self.deployments:
            return []
        labels = self.deployments[deployment]["spec"]["selector"]["matchLabels"]
        return sorted(n for n, p in self.pods.items() if _matches(p, labels))

    # -- plumbing ----------------------------------------------------------------------------------
    def _stamp(self) -> str:
        self._n += 1
        return (self._t0 + timedelta(seconds=self._n)).strftime("%Y-%m-%dT%H:%M:%SZ")

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = None
        if request.can_read_body:
            body = json.loads(await request.read())
        self.requests.append(
            Recorded(request.method, request.path, dict(request.query), request.content_type, body)
        )
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return status(401, "Unauthorized", "Unauthorized")
        if request.match_info.get("ns", self.ns) != self.ns:
            return status(404, "NotFound", f"namespace {request.match_info['ns']} not found")
        if request.method == "PATCH" and request.content_type != "application/merge-patch+json":
            return status(415, "UnsupportedMediaType", f"{request.content_type} is not supported")
        request[BODY] = body
        return await handler(request)

    def _validate(self, body: Any, schema: str, *, partial: bool = False) -> web.Response | None:
        checker = Checker().check(body, schema, partial=partial)
        self.checks.append((schema, checker))
        if checker.errors:
            return status(422, "Invalid", "; ".join(checker.errors))
        return None

    def _answer(self, body: Any, schema: str, code: int = 200) -> web.Response:
        assert Checker().check(body, schema).errors == []  # the fake must answer real shapes
        return web.json_response(body, status=code)

    # -- deployments -------------------------------------------------------------------------------
    async def _create(self, request: web.Request) -> web.Response:
        body = request[BODY]
        if (invalid := self._validate(body, DEPLOYMENT)) is not None:
            return invalid
        name = body["metadata"]["name"]
        if not DNS1123.match(name) or len(name) > 63:
            return status(422, "Invalid", f"metadata.name {name!r} is not DNS-1123")
        if name in self.deployments:
            return status(409, "AlreadyExists", f'deployments.apps "{name}" already exists')
        body["metadata"].update(uid=f"uid-{name}", creationTimestamp=self._stamp(), generation=1)
        self.deployments[name] = body
        self._reconcile()
        return self._answer(body, DEPLOYMENT, 201)

    async def _get_dep(self, request: web.Request) -> web.Response:
        dep = self.deployments.get(request.match_info["name"])
        if dep is None:
            return status(
                404, "NotFound", f'deployments.apps "{request.match_info["name"]}" not found'
            )
        return self._answer(dep, DEPLOYMENT)

    async def _scale(self, request: web.Request) -> web.Response:
        name, body = request.match_info["name"], request[BODY]
        if (invalid := self._validate(body, SCALE, partial=True)) is not None:
            return invalid
        if body.get("metadata", {}).get("name", name) != name:
            return status(400, "BadRequest", "the name in the body does not match the URL")
        dep = self.deployments.get(name)
        if dep is None:
            return status(404, "NotFound", f'deployments.apps "{name}" not found')
        dep["spec"]["replicas"] = body["spec"]["replicas"]
        self._reconcile()
        scale = {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": {"replicas": dep["spec"]["replicas"]},
            "status": {"replicas": len(self.pods_of(name))},
        }
        return self._answer(scale, SCALE)

    def _reconcile(self) -> None:
        """The ReplicaSet controller, in miniature."""
        for name, dep in self.deployments.items():
            want = dep["spec"].get("replicas", 1)
            pods = [self.pods[n] for n in self.pods_of(name)]
            for _ in range(want - len(pods)):
                self._new_pod(name, dep)
            if len(pods) > want:
                pods.sort(key=_deletion_rank)
                for pod in pods[: len(pods) - want]:
                    del self.pods[pod["metadata"]["name"]]

    def _new_pod(self, dep_name: str, dep: dict[str, Any]) -> None:
        template = dep["spec"]["template"]
        selector = template["spec"].get("nodeSelector", {})
        tolerations = template["spec"].get("tolerations", [])
        nodes = [
            n
            for n, node in self.nodes.items()
            if _subset(selector, node["metadata"]["labels"])
            and _tolerated(node["spec"].get("taints", []), tolerations)
        ]
        self._n += 1
        name = f"{dep_name}-{self._n:05d}"
        spec = json.loads(json.dumps(template["spec"]))
        if nodes:
            spec["nodeName"] = nodes[0]
        owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": dep_name + "-rs"}
        self.pods[name] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": self.ns,
                "uid": f"uid-{name}",
                "labels": dict(template["metadata"]["labels"]),
                "creationTimestamp": self._stamp(),
                "ownerReferences": [owner | {"uid": "uid-rs", "controller": True}],
            },
            "spec": spec,
            "status": {"phase": "Pending"},
        }

    # -- pods and nodes ---------------------------------------------------------------------------
    async def _list_pods(self, request: web.Request) -> web.Response:
        want = dict(
            kv.split("=", 1) for kv in request.query.get("labelSelector", "").split(",") if kv
        )
        items = [p for _, p in sorted(self.pods.items()) if _matches(p, want)]
        body = {"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"},
                "items": items}  # fmt: skip
        return self._answer(body, POD_LIST)

    async def _get_pod(self, request: web.Request) -> web.Response:
        pod = self.pods.get(request.match_info["name"])
        if pod is None:
            return status(404, "NotFound", f'pods "{request.match_info["name"]}" not found')
        return self._answer(pod, POD)

    async def _patch_pod(self, request: web.Request) -> web.Response:
        body = request[BODY]
        if (invalid := self._validate(body, POD, partial=True)) is not None:
            return invalid
        pod = self.pods.get(request.match_info["name"])
        if pod is None:
            return status(404, "NotFound", f'pods "{request.match_info["name"]}" not found')
        for key in ("annotations", "labels"):
            for k, v in body.get("metadata", {}).get(key, {}).items():
                target = pod["metadata"].setdefault(key, {})
                if v is None:
                    target.pop(k, None)
                else:
                    target[k] = v
        return self._answer(pod, POD)

    async def _delete_pod(self, request: web.Request) -> web.Response:
        pod = self.pods.pop(request.match_info["name"], None)
        if pod is None:
            return status(404, "NotFound", f'pods "{request.match_info["name"]}" not found')
        self._reconcile()
        return self._answer(pod, POD)

    async def _list_nodes(self, request: web.Request) -> web.Response:
        body = {"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": "1"},
                "items": [n for _, n in sorted(self.nodes.items())]}  # fmt: skip
        return self._answer(body, NODE_LIST)


def _subset(want: Mapping[str, str], have: Mapping[str, str]) -> bool:
    return all(have.get(k) == v for k, v in want.items())


def _tolerated(taints: list[dict[str, Any]], tolerations: list[dict[str, Any]]) -> bool:
    """Whether every NoSchedule/NoExecute taint has a matching toleration."""
    for taint in taints:
        if taint["effect"] not in ("NoSchedule", "NoExecute"):
            continue
        if not any(
            t.get("key") == taint["key"]
            and (t.get("operator") == "Exists" or t.get("value") == taint.get("value"))
            and t.get("effect") in (None, taint["effect"])
            for t in tolerations
        ):
            return False
    return True


def _matches(pod: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    return _subset(labels, pod["metadata"].get("labels", {}))


def _deletion_rank(pod: Mapping[str, Any]) -> tuple[int, int, int, str]:
    """The ReplicaSet's order for scale down: unscheduled, not ready, lower cost, newer."""
    ready = any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in pod.get("status", {}).get("conditions", [])
    )
    cost = int(pod["metadata"].get("annotations", {}).get(DELETION_COST, "0"))
    created = pod["metadata"]["creationTimestamp"]
    newer_first = "".join(chr(255 - ord(c)) for c in created)
    return (bool(pod["spec"].get("nodeName")), ready, cost, newer_first)


# ---------------------------------------------------------------------------------------------
# Fixtures: TLS material, the fake on HTTPS, a pod /metrics endpoint


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path] | None:
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@dataclass
class Cluster:
    fake: FakeApiServer
    config: KubeConfig
    metrics: dict[str, int]
    metrics_port: int


@contextlib.asynccontextmanager
async def serve(app: web.Application, ssl_context: Any = None) -> AsyncIterator[int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, 0, ssl_context=ssl_context).start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


@pytest.fixture
async def cluster(tls: tuple[Path, Path] | None) -> AsyncIterator[Cluster]:
    import ssl

    fake = FakeApiServer(token="s3cret-token")
    fake.add_node("od-1", {"node.kubernetes.io/instance-type": "g5.xlarge",
                           "karpenter.sh/capacity-type": "on-demand"})  # fmt: skip
    fake.add_node("spot-1", {"node.kubernetes.io/instance-type": "g5.xlarge",
                             "karpenter.sh/capacity-type": "spot"})  # fmt: skip
    fake.add_node("rsv-1", {"node.kubernetes.io/instance-type": "g5.xlarge",
                            "karpenter.sh/capacity-type": "on-demand",
                            "fleetpilot.io/capacity-class": "reserved"})  # fmt: skip
    metrics = {"running": 0}

    async def pod_metrics(_: web.Request) -> web.Response:
        text = (
            f'vllm:num_requests_running{{model_name="{MODEL}"}} {metrics["running"]}\n'
            f'vllm:num_requests_waiting{{model_name="{MODEL}"}} 0\n'
        )
        return web.Response(text=text)

    pod_app = web.Application()
    pod_app.router.add_get("/metrics", pod_metrics)
    server_ssl = None
    if tls is not None:
        server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ssl.load_cert_chain(str(tls[0]), str(tls[1]))
    async with serve(fake.app, server_ssl) as api_port, serve(pod_app) as metrics_port:
        scheme = "https" if tls else "http"
        config = KubeConfig(
            server=f"{scheme}://{HOST}:{api_port}",
            namespace="serving",
            token="s3cret-token",
            ca_file=str(tls[0]) if tls else None,
        )
        yield Cluster(fake, config, metrics, metrics_port)


def options(cluster: Cluster, **kw: Any) -> KubeOptions:
    base: dict[str, Any] = dict(
        namespace="serving",
        port=cluster.metrics_port,
        poll_real_s=0.1,
        drain_poll_real_s=0.05,
        drain_timeout_s=30.0,
        env={"HF_HOME": "/models"},
    )
    return KubeOptions(**(base | kw))


async def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def assert_all_valid(fake: FakeApiServer) -> None:
    assert fake.checks, "no body was checked"
    for schema, checker in fake.checks:
        assert checker.errors == [], (schema, checker.errors)
        assert checker.pruned == [], (schema, checker.pruned)  # no field outside the subset


# ---------------------------------------------------------------------------------------------
# Tests


def test_names_are_dns1123_and_manifests_match_the_published_schema() -> None:
    assert dns1123("A10G-on_demand") == "a10g-on-demand"
    assert dns1123("--Weird__Name..") == "weird-name"
    long = dns1123("p" * 100)
    assert len(long) == 63 and DNS1123.match(long) and long != dns1123("p" * 99)
    assert default_instance_types()["A10G"] == "g5.xlarge"
    cat = load_catalogue()
    for model in cat.models:
        for pool in cat.pools(model, classes=tuple(CapacityClass)):
            for selector in ("instance-type", "gpu-product"):
                manifest = deployment_manifest(pool, 3, KubeOptions(selector=selector))
                checker = Checker().check(manifest, DEPLOYMENT)
                assert checker.errors == [] and checker.pruned == [], (pool.name, checker)
                assert DNS1123.match(manifest["metadata"]["name"])
                pod = manifest["spec"]["template"]["spec"]
                count = str(pool.offering.count)
                assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": count}
    body = scale_body("fleetpilot-a10g-spot", "serving", 4)
    checker = Checker().check(body, SCALE)
    assert checker.errors == [] and checker.pruned == []


SPREAD = "topologySpreadConstraints"


def test_spot_pools_over_zones_spread_their_pods_as_the_planner_hedges() -> None:
    spot = catalogue_pool(CapacityClass.SPOT)  # A10G spot: 3 zones in the catalogue
    assert spot.offering.zones == 3
    pod = deployment_manifest(spot, 6, KubeOptions())["spec"]["template"]["spec"]
    assert pod[SPREAD] == [
        {
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {
                "matchLabels": {
                    "app.kubernetes.io/managed-by": "fleetpilot",
                    "fleetpilot.io/pool": "A10G-spot",
                }
            },
            "minDomains": 3,
        }
    ]
    # the selector picks this pool's pods only: the Deployment's own selector
    manifest = deployment_manifest(spot, 6, KubeOptions())
    assert pod[SPREAD][0]["labelSelector"] == manifest["spec"]["selector"]
    loose = deployment_manifest(spot, 6, KubeOptions(zone_min_domains=False))
    assert "minDomains" not in loose["spec"]["template"]["spec"][SPREAD][0]
    # on-demand, reserved and a one-zone spot pool: no spread (zones do not enter the hedge)
    one_zone = replace(spot, offering=replace(spot.offering, zones=1))
    for pool in (catalogue_pool(CapacityClass.ON_DEMAND), catalogue_pool(CapacityClass.RESERVED),
                 one_zone):  # fmt: skip
        assert SPREAD not in deployment_manifest(pool, 2, KubeOptions())["spec"]["template"]["spec"]
    # the checker holds the constraint to the published schema
    bad = json.loads(json.dumps(manifest))
    del bad["spec"]["template"]["spec"][SPREAD][0]["topologyKey"]
    bad["spec"]["template"]["spec"][SPREAD][0]["maxSkew"] = "1"
    errors = Checker().check(bad, DEPLOYMENT).errors
    assert any("missing required field 'topologyKey'" in e for e in errors)
    assert any("is not integer" in e for e in errors)


async def test_deployments_per_pool_with_node_selectors_and_scale_subresource(
    cluster: Cluster,
) -> None:
    fake = cluster.fake
    od, spot, rsv = (catalogue_pool(c) for c in (CapacityClass.ON_DEMAND, CapacityClass.SPOT,
                                                 CapacityClass.RESERVED))  # fmt: skip
    act = KubernetesActuator(KubeClient(cluster.config), SystemClock(), options(cluster))
    try:
        await act.apply(Plan({od.name: 2, spot.name: 1, rsv.name: 1}), [od, spot, rsv])
        created = {b["metadata"]["name"]: b for b in fake.bodies("POST", "/deployments")}
        assert set(created) == {deployment_name(p) for p in (od, spot, rsv)}
        selectors = {n: d["spec"]["template"]["spec"]["nodeSelector"] for n, d in created.items()}
        assert selectors[deployment_name(od)] == {
            "node.kubernetes.io/instance-type": "g5.xlarge",
            "karpenter.sh/capacity-type": "on-demand",
        }
        assert selectors[deployment_name(spot)]["karpenter.sh/capacity-type"] == "spot"
        pod_specs = {n: d["spec"]["template"]["spec"] for n, d in created.items()}
        assert [c["topologyKey"] for c in pod_specs[deployment_name(spot)][SPREAD]] == [
            "topology.kubernetes.io/zone"
        ]
        assert SPREAD not in pod_specs[deployment_name(od)]
        assert selectors[deployment_name(rsv)] == {
            "node.kubernetes.io/instance-type": "g5.xlarge",
            "karpenter.sh/capacity-type": "on-demand",
            "fleetpilot.io/capacity-class": "reserved",
        }
        container = created[deployment_name(od)]["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
        assert container["args"][:4] == ["--model", "meta-llama/Llama-3.1-8B-Instruct",
                                         "--served-model-name", MODEL]  # fmt: skip
        assert created[deployment_name(od)]["spec"]["replicas"] == 2

        reps = await act.replicas()
        assert [r.state for r in reps] == [ReplicaState.STARTING] * 4
        fake.make_ready()
        reps = await act.replicas()
        assert {r.state for r in reps} == {ReplicaState.READY}
        assert all(r.url == f"http://{HOST}:{cluster.metrics_port}" for r in reps)

        # Scale up goes through the scale subresource, as a merge patch.
        await act.apply(Plan({spot.name: 3}), [od, spot, rsv])
        patches = [r for r in fake.requests if r.path.endswith("/scale")]
        assert patches[-1].content_type == "application/merge-patch+json"
        assert patches[-1].body == scale_body(deployment_name(spot), "serving", 3)
        assert len(fake.pods_of(deployment_name(spot))) == 3
        assert not fake.bodies("PATCH", "/deployments/" + deployment_name(od))  # no full update
    finally:
        await act.close()
    assert_all_valid(fake)


async def test_scale_down_drains_ready_pods_before_the_scale_drops(cluster: Cluster) -> None:
    fake = cluster.fake
    od = catalogue_pool(CapacityClass.ON_DEMAND)
    name = deployment_name(od)
    seen: list[list[tuple[str, ReplicaState]]] = []
    act = KubernetesActuator(
        KubeClient(cluster.config),
        SystemClock(),
        options(cluster),
        on_change=lambda reps: seen.append([(r.id, r.state) for r in reps]),
    )
    try:
        await act.apply(Plan({od.name: 3}), [od])
        fake.make_ready()
        await act.replicas()
        newest = fake.pods_of(name)[-1]
        cluster.metrics["running"] = 2  # the victim is busy
        await act.apply(Plan({od.name: 2}), [od])
        # Marked draining and annotated, but the Deployment still holds 3 pods.
        annotations = fake.pods[newest]["metadata"]["annotations"]
        assert annotations[DRAINING] == "true" and annotations[DELETION_COST] == "-1000"
        assert fake.deployments[name]["spec"]["replicas"] == 3
        assert (newest, ReplicaState.DRAINING) in seen[-1]
        await asyncio.sleep(0.4)
        assert newest in fake.pods  # still serving its requests
        cluster.metrics["running"] = 0
        await wait_for(lambda: newest not in fake.pods, 5, "the drained pod to go")
        assert fake.deployments[name]["spec"]["replicas"] == 2
        assert len(fake.pods_of(name)) == 2
        order = [
            ("pod" if r.path.endswith(newest) else "scale")
            for r in fake.requests
            if r.method == "PATCH" and (r.path.endswith(newest) or r.path.endswith("/scale"))
        ]
        assert order == ["pod", "scale"]  # annotate (drain) first, then lower the scale
        reps = await act.replicas()
        assert [r.state for r in reps] == [ReplicaState.READY, ReplicaState.READY]
    finally:
        await act.close()
    assert_all_valid(fake)


async def test_node_interruption_drains_its_pods_and_a_replacement_is_planned(
    cluster: Cluster,
) -> None:
    fake = cluster.fake
    spot = catalogue_pool(CapacityClass.SPOT)
    name = deployment_name(spot)
    clock = SystemClock()
    act = KubernetesActuator(KubeClient(cluster.config), clock, options(cluster))

    def policy(snapshot: Snapshot, state: Any, params: PlanParams) -> tuple[Plan, Any]:
        return Plan({spot.name: 2}), state

    class NoDemand:
        async def demand(self) -> dict[str, Demand]:
            return {MODEL: Demand()}

    ctl = Controller(policy, PlanParams(), act, NoDemand(), clock, None, 60.0, pools=[spot])
    try:
        async with ctl:
            await wait_for(lambda: len(fake.pods_of(name)) == 2, 5, "two spot pods")
            fake.make_ready()
            fake.taint("spot-1", "karpenter.sh/disrupted")
            await wait_for(lambda: bool(ctl.notices), 5, "the interruption notice")
            assert ctl.notices[0].pool == spot.name
            assert "spot-1" in ctl.notices[0].reason
            await wait_for(lambda: any(s.reason == "notice" for s in ctl.steps), 5, "the re-plan")
            # Both pods sit on the disrupted node: both drain, two replacements are asked for.
            await wait_for(
                lambda: fake.deployments[name]["spec"]["replicas"] == 4, 5, "the replacements"
            )
            reps = await act.replicas()
            draining = [r for r in reps if r.state is ReplicaState.DRAINING]
            assert len(draining) == 2 and len(reps) == 4
            # Karpenter takes the node away: its pods go, and the scale returns to the target.
            for pod in [p for p in fake.pods if fake.pods[p]["spec"].get("nodeName") == "spot-1"]:
                del fake.pods[pod]
            await ctl.step()
            assert fake.deployments[name]["spec"]["replicas"] == 2
    finally:
        await act.close()
    assert_all_valid(fake)


async def test_in_cluster_and_kubeconfig_authentication(
    cluster: Cluster, tmp_path: Path, tls: tuple[Path, Path] | None
) -> None:
    fake = cluster.fake
    port = cluster.config.server.rsplit(":", 1)[1]
    # in-cluster: token and CA from the service account folder, server from the environment
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("s3cret-token\n")
    (sa / "namespace").write_text("serving")
    if tls is not None:
        (sa / "ca.crt").write_bytes(tls[0].read_bytes())
    cfg = KubeConfig.in_cluster(sa, {"KUBERNETES_SERVICE_HOST": HOST,
                                     "KUBERNETES_SERVICE_PORT": port})  # fmt: skip
    if tls is None:
        cfg = KubeConfig(server=cluster.config.server, token_file=cfg.token_file)
    client = KubeClient(cfg)
    assert cfg.namespace == "serving" or tls is None
    nodes = await client.get("/api/v1/nodes")
    assert len(nodes["items"]) == 3
    (sa / "token").write_text("rotated")  # bound tokens rotate: read on every request
    with pytest.raises(KubeApiError) as err:
        await client.get("/api/v1/nodes")
    assert err.value.status == 401
    await client.close()
    assert fake.requests[-1].path == "/api/v1/nodes"

    # kubeconfig: server, CA data and token of the current context
    cluster_entry: dict[str, Any] = {"server": cluster.config.server}
    if tls is not None:
        cluster_entry["certificate-authority-data"] = base64.b64encode(tls[0].read_bytes()).decode()
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "gpu",
        "contexts": [{"name": "gpu", "context": {"cluster": "c", "user": "u",
                                                  "namespace": "serving"}}],
        "clusters": [{"name": "c", "cluster": cluster_entry}],
        "users": [{"name": "u", "user": {"token": "s3cret-token"}}],
    }  # fmt: skip
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    cfg = KubeConfig.from_kubeconfig(path)
    assert (cfg.namespace, cfg.token) == ("serving", "s3cret-token")
    client = KubeClient(cfg)
    pods = await client.get("/api/v1/namespaces/serving/pods", labelSelector="a=b")
    assert pods["items"] == []
    await client.close()


def test_in_cluster_requires_the_service_environment(tmp_path: Path) -> None:
    from fleetpilot.errors import ConfigError

    with pytest.raises(ConfigError, match="not in a cluster"):
        KubeConfig.in_cluster(tmp_path, {})


def test_deploy_manifests_parse_and_their_deployments_match_the_schema() -> None:
    folder = Path(__file__).parent.parent / "deploy" / "kubernetes"
    kinds = []
    for path in sorted(folder.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], path
            kinds.append(doc["kind"])
            if doc["kind"] == "Deployment":
                checker = Checker().check(doc, DEPLOYMENT)
                assert checker.errors == [], (path.name, checker.errors)
            if doc["kind"] == "ConfigMap" and "fleet.yaml" in doc["data"]:
                from fleetpilot.config import FleetConfig

                FleetConfig.model_validate(yaml.safe_load(doc["data"]["fleet.yaml"]))
            if doc["kind"] == "ConfigMap" and "controller.yaml" in doc["data"]:
                from fleetpilot.controller.service import ControllerSettings

                ControllerSettings.model_validate(yaml.safe_load(doc["data"]["controller.yaml"]))
    assert kinds.count("Deployment") == 3 and "ClusterRole" in kinds
