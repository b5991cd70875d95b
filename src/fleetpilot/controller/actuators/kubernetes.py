"""The Kubernetes actuator: one Deployment of vLLM per pool, scaled through its scale subresource.

Each pool becomes a Deployment named ``fleetpilot-<pool>`` (DNS-1123), whose pods

- select nodes by ``node.kubernetes.io/instance-type`` (the catalogue's instance for the
  accelerator) or, with ``selector="gpu-product"``, by GPU feature discovery's
  ``nvidia.com/gpu.product``; and by ``karpenter.sh/capacity-type`` (``spot`` or
  ``on-demand``; reserved capacity is on-demand capacity on nodes labelled
  ``fleetpilot.io/capacity-class: reserved``);
- ask for ``nvidia.com/gpu: <count>`` and run the vLLM OpenAI server (image and arguments
  configurable) with a readiness probe on ``/health``;
- for a spot pool whose offering spreads over ``zones`` > 1 availability zones, spread across
  ``topology.kubernetes.io/zone`` with ``maxSkew: 1``, ``whenUnsatisfiable: DoNotSchedule``
  and ``minDomains: zones`` (Karpenter provisions nodes to satisfy it).  This is what the
  planner's spot hedge assumes: the fullest zone holds ``ceil(replicas / zones)``.  A pod
  that would break the spread stays pending rather than land in a fuller zone; so when a zone
  has no capacity left, or the cluster spans fewer zones than ``zones``, the pool falls short
  of its target and the planner, seeing it short, moves the rest to other pools.

Scaling: ``apply`` sets ``spec.replicas`` with ``PATCH .../deployments/{name}/scale``
(an ``autoscaling/v1`` ``Scale``, merge patch) to the plan's target plus the pods still
draining.  Scale down drains first: surplus pods that are not ready are left to the
ReplicaSet (it removes not-ready pods first); ready ones are annotated
``fleetpilot.io/draining`` and ``controller.kubernetes.io/pod-deletion-cost: -1000``, reported
as draining (so the gateway stops routing to them), and released once their ``/metrics``
show nothing running or waiting (or ``drain_timeout_s`` passes): the scale is lowered and, if
the ReplicaSet picked another pod, the drained one is deleted.  The annotation keeps the
draining state in the cluster, so a restarted controller carries on.

Interruptions: nodes tainted by Karpenter's disruption (``karpenter.sh/disrupted``), the AWS
Node Termination Handler's spot and rebalance taints, nodes with a configured condition, or
cordoned nodes, make their pods draining at once, with a :class:`~.base.PreemptionNotice`.
Pods and nodes are listed every ``poll_real_s`` seconds (and on every ``replicas()``).

It talks to the API server with aiohttp: bearer token (re-read from its file on each request,
as bound service-account tokens rotate), cluster CA, or a kubeconfig's server, token or client
certificate.  No Kubernetes client package is needed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import math
import os
import re
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import aiohttp
import yaml

from fleetpilot.clock import Clock
from fleetpilot.controller.actuators.base import NoticeBus, PreemptionNotice
from fleetpilot.core.capacity import Plan
from fleetpilot.core.model import CapacityClass, Pool, Replica, ReplicaState
from fleetpilot.engines import in_flight
from fleetpilot.errors import ConfigError, FleetpilotError

__all__ = [
    "GPU_PRODUCTS",
    "INTERRUPTION_TAINTS",
    "KubeApiError",
    "KubeClient",
    "KubeConfig",
    "KubeOptions",
    "KubernetesActuator",
    "default_instance_types",
    "deployment_manifest",
    "deployment_name",
    "dns1123",
    "scale_body",
    "zone_spread",
]

log = logging.getLogger("fleetpilot.controller")

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MANAGED_BY = "app.kubernetes.io/managed-by"
POOL_LABEL = "fleetpilot.io/pool"
DRAINING = "fleetpilot.io/draining"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
MERGE_PATCH = "application/merge-patch+json"

# GPU feature discovery's product label values (spaces become dashes).
GPU_PRODUCTS: dict[str, str] = {
    "A10G": "NVIDIA-A10G",
    "L4": "NVIDIA-L4",
    "L40S": "NVIDIA-L40S",
    "A100-80G": "NVIDIA-A100-SXM4-80GB",
    "H100": "NVIDIA-H100-80GB-HBM3",
}
# Taints that announce a node is going away.
INTERRUPTION_TAINTS = (
    "karpenter.sh/disrupted",  # Karpenter v1: node chosen for disruption (incl. interruption)
    "karpenter.sh/disruption",  # Karpenter before v1
    "aws-node-termination-handler/spot-itn",
    "aws-node-termination-handler/rebalance-recommendation",
    "aws-node-termination-handler/scheduled-maintenance",
    "aws-node-termination-handler/asg-lifecycle-termination",
)
DEFAULT_MODEL_IDS: dict[str, str] = {
    "llama-3.1-8b": "meta-llama/Llama-3.1-8B-Instruct",
    "llama-2-70b": "meta-llama/Llama-2-70b-chat-hf",
}


class KubeApiError(FleetpilotError):
    """The API server answered with an error status (its ``Status`` message included)."""

    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(f"Kubernetes API {status} {reason}: {message}".strip())
        self.status = status
        self.reason = reason


# ---------------------------------------------------------------------------------------------
# Names


def dns1123(name: str, max_len: int = 63) -> str:
    """``name`` as a DNS-1123 label: lower case, ``[a-z0-9-]``, alphanumeric at both ends,
    at most ``max_len`` characters (a hash keeps shortened names distinct)."""
    out = re.sub(r"[^a-z0-9-]+", "-", name.lower())
    out = re.sub(r"-{2,}", "-", out).strip("-") or "x"
    if len(out) > max_len:
        digest = hashlib.sha1(name.encode()).hexdigest()[:6]
        out = out[: max_len - 7].rstrip("-") + "-" + digest
    return out


def label_value(value: str) -> str:
    """``value`` as a label value: ``[A-Za-z0-9._-]``, alphanumeric at both ends, <= 63."""
    out = re.sub(r"[^A-Za-z0-9._-]+", "-", value).strip("-._")
    if len(out) > 63:
        out = out[:56].rstrip("-._") + "-" + hashlib.sha1(value.encode()).hexdigest()[:6]
    return out


def deployment_name(pool: Pool, prefix: str = "fleetpilot-") -> str:
    return dns1123(prefix + pool.name)


def default_instance_types(catalogue: Path | str | None = None) -> dict[str, str]:
    """Accelerator -> instance type, from the ``instance`` of each price in the catalogue."""
    if catalogue is None:
        text = resources.files("fleetpilot").joinpath("catalogue.yaml").read_text()
    else:
        text = Path(catalogue).read_text()
    prices = (yaml.safe_load(text) or {}).get("prices", {})
    return {acc: str(p["instance"]) for acc, p in prices.items() if p.get("instance")}


# ---------------------------------------------------------------------------------------------
# Manifests


@dataclass(frozen=True)
class KubeOptions:
    """How pools become Deployments.  Times in seconds; ``drain_timeout_s`` on the clock."""

    namespace: str = "default"
    image: str = "vllm/vllm-openai:latest"
    port: int = 8000
    model_ids: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_MODEL_IDS))
    extra_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    selector: Literal["instance-type", "gpu-product"] = "instance-type"
    instance_types: Mapping[str, str] = field(default_factory=default_instance_types)
    gpu_products: Mapping[str, str] = field(default_factory=lambda: dict(GPU_PRODUCTS))
    name_prefix: str = "fleetpilot-"
    service_account: str | None = None
    termination_grace_s: int = 120
    tolerations: tuple[Mapping[str, str], ...] = (
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    )
    drain_timeout_s: float = 300.0
    drain_poll_real_s: float = 2.0
    poll_real_s: float = 5.0
    notice_s: float = 120.0
    interruption_taints: tuple[str, ...] = INTERRUPTION_TAINTS
    interruption_conditions: tuple[str, ...] = ()
    cordon_drains: bool = True
    zone_key: str = "topology.kubernetes.io/zone"
    zone_min_domains: bool = True  # minDomains = zones: never fewer zones than planned for


def _pool_labels(pool: Pool) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "fleetpilot-replica",
        MANAGED_BY: "fleetpilot",
        POOL_LABEL: label_value(pool.name),
        "fleetpilot.io/model": label_value(pool.model),
        "fleetpilot.io/capacity-class": pool.offering.capacity_class.value,
    }


def node_selector(pool: Pool, options: KubeOptions) -> dict[str, str]:
    acc = pool.offering.accelerator
    out: dict[str, str] = {}
    if options.selector == "gpu-product":
        if acc not in options.gpu_products:
            raise ConfigError(f"no nvidia.com/gpu.product value for accelerator {acc!r}")
        out["nvidia.com/gpu.product"] = options.gpu_products[acc]
    else:
        if acc not in options.instance_types:
            raise ConfigError(f"no instance type for accelerator {acc!r} in the catalogue")
        out["node.kubernetes.io/instance-type"] = options.instance_types[acc]
    cls = pool.offering.capacity_class
    out["karpenter.sh/capacity-type"] = "spot" if cls is CapacityClass.SPOT else "on-demand"
    if cls is CapacityClass.RESERVED:
        out["fleetpilot.io/capacity-class"] = "reserved"
    return out


def zone_spread(pool: Pool, options: KubeOptions) -> list[dict[str, Any]]:
    """The pod's ``topologySpreadConstraints``: a zone spread for a spot pool over zones."""
    zones = pool.offering.zones
    if pool.offering.capacity_class is not CapacityClass.SPOT or zones <= 1:
        return []
    spread: dict[str, Any] = {
        "maxSkew": 1,
        "topologyKey": options.zone_key,
        "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {
            "matchLabels": {MANAGED_BY: "fleetpilot", POOL_LABEL: label_value(pool.name)}
        },
    }
    if options.zone_min_domains:
        spread["minDomains"] = zones
    return [spread]


def deployment_manifest(pool: Pool, replicas: int, options: KubeOptions) -> dict[str, Any]:
    """The ``apps/v1`` Deployment for ``pool`` with ``replicas`` pods."""
    name = deployment_name(pool, options.name_prefix)
    labels = _pool_labels(pool)
    count = str(pool.offering.count)
    model_id = options.model_ids.get(pool.model, pool.model)
    http = {"path": "/health", "port": "http"}
    startup_checks = max(30, math.ceil(3 * pool.offering.startup_s / 10))
    args = ["--model", model_id, "--served-model-name", pool.model, "--port", str(options.port)]
    args += ["--tensor-parallel-size", count, *options.extra_args]
    container: dict[str, Any] = {
        "name": "vllm",
        "image": options.image,
        "args": args,
        "ports": [{"name": "http", "containerPort": options.port, "protocol": "TCP"}],
        "resources": {"limits": {"nvidia.com/gpu": count}, "requests": {"nvidia.com/gpu": count}},
        "startupProbe": {"httpGet": http, "periodSeconds": 10, "failureThreshold": startup_checks},
        "readinessProbe": {"httpGet": http, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"httpGet": http, "periodSeconds": 10, "failureThreshold": 6},
    }
    if options.env:
        container["env"] = [{"name": k, "value": v} for k, v in sorted(options.env.items())]
    pod_spec: dict[str, Any] = {
        "nodeSelector": node_selector(pool, options),
        "tolerations": [dict(t) for t in options.tolerations],
        "terminationGracePeriodSeconds": options.termination_grace_s,
        "containers": [container],
    }
    if options.service_account:
        pod_spec["serviceAccountName"] = options.service_account
    spread = zone_spread(pool, options)
    if spread:
        pod_spec["topologySpreadConstraints"] = spread
    annotations = {
        "fleetpilot.io/pool": pool.name,
        "fleetpilot.io/offering": pool.offering.name,
        "fleetpilot.io/price-per-hour": f"{pool.offering.price_per_hour:g}",
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": options.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {MANAGED_BY: "fleetpilot", POOL_LABEL: labels[POOL_LABEL]}},
            "strategy": {"type": "RollingUpdate"},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def scale_body(name: str, namespace: str, replicas: int) -> dict[str, Any]:
    """An ``autoscaling/v1`` Scale setting ``spec.replicas`` (sent as a merge patch)."""
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"replicas": replicas},
    }


# ---------------------------------------------------------------------------------------------
# Talking to the API server


@dataclass(frozen=True)
class KubeConfig:
    """Where the API server is and how to authenticate to it."""

    server: str
    namespace: str = "default"
    token: str | None = None
    token_file: str | None = None
    ca_file: str | None = None
    ca_data: str | None = None  # PEM
    client_cert_file: str | None = None
    client_key_file: str | None = None
    insecure_skip_tls_verify: bool = False

    @classmethod
    def in_cluster(
        cls, root: Path = SERVICE_ACCOUNT_DIR, env: Mapping[str, str] | None = None
    ) -> KubeConfig:
        """The pod's service account: ``KUBERNETES_SERVICE_HOST``/``_PORT``, token and CA."""
        env = os.environ if env is None else env
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
        if not host or not port:
            raise ConfigError("not in a cluster: KUBERNETES_SERVICE_HOST/PORT are not set")
        token = root / "token"
        if not token.exists():
            raise ConfigError(f"no service account token at {token}")
        host = f"[{host}]" if ":" in host else host
        ns_file = root / "namespace"
        namespace = ns_file.read_text().strip() if ns_file.exists() else "default"
        return cls(
            server=f"https://{host}:{port}",
            namespace=namespace,
            token_file=str(token),
            ca_file=str(root / "ca.crt"),
        )

    @classmethod
    def from_kubeconfig(
        cls, path: Path | str | None = None, context: str | None = None
    ) -> KubeConfig:
        """A kubeconfig's context (default: ``current-context``; path: ``$KUBECONFIG`` or
        ``~/.kube/config``).  Token, token file and client certificates are supported; exec
        and auth-provider plugins are not."""
        if path is None:
            path = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or "~/.kube/config"
        path = Path(path).expanduser()
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read kubeconfig {path}: {exc}") from exc
        base = path.parent

        def named(kind: str, name: str | None) -> dict[str, Any]:
            for item in doc.get(kind + "s") or ():
                if item.get("name") == name:
                    found: dict[str, Any] = item.get(kind) or {}
                    return found
            raise ConfigError(f"kubeconfig {path}: no {kind} named {name!r}")

        ctx = named("context", context or doc.get("current-context"))
        cluster = named("cluster", ctx.get("cluster"))
        user = named("user", ctx.get("user")) if ctx.get("user") else {}
        if user.get("exec") or user.get("auth-provider"):
            raise ConfigError(f"kubeconfig {path}: exec/auth-provider users are not supported")

        def local(p: str | None) -> str | None:
            return None if p is None else str((base / p).expanduser())

        def data(key: str) -> str | None:
            raw = cluster.get(key) if key.startswith("certificate") else user.get(key)
            return None if raw is None else base64.b64decode(raw).decode()

        cert_file, key_file = local(user.get("client-certificate")), local(user.get("client-key"))
        cert_data, key_data = data("client-certificate-data"), data("client-key-data")
        if cert_data and key_data:
            cert_file, key_file = _write_private(cert_data, key_data)
        return cls(
            server=str(cluster["server"]).rstrip("/"),
            namespace=ctx.get("namespace") or "default",
            token=user.get("token"),
            token_file=local(user.get("tokenFile")),
            ca_file=local(cluster.get("certificate-authority")),
            ca_data=data("certificate-authority-data"),
            client_cert_file=cert_file,
            client_key_file=key_file,
            insecure_skip_tls_verify=bool(cluster.get("insecure-skip-tls-verify")),
        )

    def bearer(self) -> str | None:
        if self.token_file:
            return Path(self.token_file).read_text().strip()
        return self.token

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https"):
            return False
        if self.insecure_skip_tls_verify:
            return False
        ctx = ssl.create_default_context(cafile=self.ca_file, cadata=self.ca_data)
        if self.client_cert_file:
            ctx.load_cert_chain(self.client_cert_file, self.client_key_file)
        return ctx


def _write_private(cert: str, key: str) -> tuple[str, str]:
    """Client certificate and key from kubeconfig data into 0600 files (ssl needs paths)."""
    folder = tempfile.mkdtemp(prefix="fleetpilot-kube-")
    paths = []
    for name, text in (("client.crt", cert), ("client.key", key)):
        p = os.path.join(folder, name)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        paths.append(p)
    return paths[0], paths[1]


class KubeClient:
    """JSON over HTTPS to the API server; errors become :class:`KubeApiError`."""

    def __init__(self, config: KubeConfig, *, timeout_s: float = 15.0) -> None:
        self.config = config
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self.config.ssl_context())
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        headers = {"Accept": "application/json"}
        token = self.config.bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        url = self.config.server + path
        async with self._get_session().request(
            method, url, params=params, data=data, headers=headers
        ) as resp:
            raw = await resp.read()
            if resp.status >= 400:
                message, reason = raw.decode("utf-8", "replace")[:500], ""
                with contextlib.suppress(ValueError, AttributeError):
                    status = json.loads(raw)
                    message, reason = status.get("message", message), status.get("reason", "")
                raise KubeApiError(resp.status, message, reason)
            return json.loads(raw) if raw else None

    async def get(self, path: str, **params: str) -> Any:
        return await self.request("GET", path, params=params or None)

    async def post(self, path: str, body: Any) -> Any:
        return await self.request("POST", path, body=body)

    async def patch(self, path: str, body: Any, content_type: str = MERGE_PATCH) -> Any:
        return await self.request("PATCH", path, body=body, content_type=content_type)

    async def delete(self, path: str) -> Any:
        return await self.request("DELETE", path)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


# ---------------------------------------------------------------------------------------------
# The actuator


def _ready(pod: Mapping[str, Any]) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or ():
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def _created(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("creationTimestamp") or "")


class KubernetesActuator:
    def __init__(
        self,
        client: KubeClient,
        clock: Clock,
        options: KubeOptions | None = None,
        *,
        on_change: Callable[[list[Replica]], object] | None = None,
    ) -> None:
        self.client = client
        self.clock = clock
        self.options = options or KubeOptions(namespace=client.config.namespace)
        self.on_change = on_change
        self._pools: dict[str, Pool] = {}
        self._by_label: dict[str, Pool] = {}
        self._pods: dict[str, dict[str, Any]] = {}
        self._disrupted_nodes: set[str] = set()
        self._drain_tasks: dict[str, asyncio.Task[None]] = {}
        self._released: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._marking: set[str] = set()  # drains whose annotation PATCH is in flight
        self._targets: dict[str, int] = {}
        self._noticed: set[str] = set()
        self._bus = NoticeBus()
        self._poller: asyncio.Task[None] | None = None
        self._last: list[Replica] = []
        self._closed = False

    # -- paths ---------------------------------------------------------------------------------
    @property
    def _ns(self) -> str:
        return self.options.namespace

    def _deployment_path(self, name: str = "") -> str:
        base = f"/apis/apps/v1/namespaces/{self._ns}/deployments"
        return f"{base}/{name}" if name else base

    def _pod_path(self, name: str = "") -> str:
        base = f"/api/v1/namespaces/{self._ns}/pods"
        return f"{base}/{name}" if name else base

    # -- the Actuator protocol -----------------------------------------------------------------
    async def apply(self, plan: Plan, pools: Sequence[Pool]) -> None:
        self._start_polling()
        for pool in pools:
            self._pools[pool.name] = pool
            self._by_label[label_value(pool.name)] = pool
        await self._refresh()
        for pool in pools:
            if pool.name not in plan.targets:
                continue
            target = pool.offering.within_quota(int(plan.targets[pool.name]))
            self._targets[pool.name] = target
            pods = self._pods_of(pool)
            active = [p for p in pods if not self._draining(p)]
            surplus = len(active) - target
            # Not-ready pods serve nothing: the ReplicaSet removes those first on scale down.
            surplus -= sum(1 for p in active if not _ready(p))
            if surplus > 0:
                ready = sorted((p for p in active if _ready(p)), key=_created, reverse=True)
                for pod in ready[:surplus]:
                    await self._begin_drain(pod)
            await self._scale(pool, target + self._held(pool))
        self._publish()

    async def replicas(self) -> list[Replica]:
        self._start_polling()
        await self._refresh()
        return self._publish()

    async def drain(self, replica_id: str) -> None:
        pod = self._pods.get(replica_id)
        if pod is not None:
            await self._begin_drain(pod)
            self._publish()

    def notices(self) -> AsyncIterator[PreemptionNotice]:
        return self._bus.subscribe()

    async def close(self) -> None:
        self._closed = True
        tasks = [t for t in (self._poller, *self._tasks) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._bus.close()
        await self.client.close()

    # -- reading the cluster -------------------------------------------------------------------
    async def _refresh(self) -> None:
        pods = await self.client.get(self._pod_path(), labelSelector=f"{MANAGED_BY}=fleetpilot")
        nodes = await self.client.get("/api/v1/nodes")
        self._disrupted_nodes = {
            n["metadata"]["name"] for n in nodes.get("items") or () if self._node_disrupted(n)
        }
        live: dict[str, dict[str, Any]] = {}
        for pod in pods.get("items") or ():
            phase = (pod.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                continue
            live[pod["metadata"]["name"]] = pod
        for gone in set(self._drain_tasks) - set(live):
            self._drain_tasks.pop(gone).cancel()
        self._released &= set(live)
        self._pods = live
        for name, pod in live.items():
            node = (pod.get("spec") or {}).get("nodeName")
            if node in self._disrupted_nodes and name not in self._noticed:
                self._noticed.add(name)
                await self._begin_drain(pod)
                now = self.clock.now()
                pool = self._pool_of(pod)
                self._bus.publish(
                    PreemptionNotice(
                        name,
                        pool.name if pool else "",
                        now,
                        now + self.options.notice_s,
                        reason=f"node {node} is being disrupted",
                    )
                )
            elif self._annotated(pod) and name not in self._drain_tasks:
                self._spawn_drain(name)  # drained before a restart: carry on

    def _node_disrupted(self, node: Mapping[str, Any]) -> bool:
        spec = node.get("spec") or {}
        if self.options.cordon_drains and spec.get("unschedulable"):
            return True
        if any(t.get("key") in self.options.interruption_taints for t in spec.get("taints") or ()):
            return True
        wanted = self.options.interruption_conditions
        conditions = (node.get("status") or {}).get("conditions") or ()
        return any(c.get("type") in wanted and c.get("status") == "True" for c in conditions)

    def _pool_of(self, pod: Mapping[str, Any]) -> Pool | None:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        return self._by_label.get(labels.get(POOL_LABEL, ""))

    def _pods_of(self, pool: Pool) -> list[dict[str, Any]]:
        want = label_value(pool.name)
        return [
            p
            for p in self._pods.values()
            if (p["metadata"].get("labels") or {}).get(POOL_LABEL) == want
        ]

    @staticmethod
    def _annotated(pod: Mapping[str, Any]) -> bool:
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        return annotations.get(DRAINING) == "true"

    def _draining(self, pod: Mapping[str, Any]) -> bool:
        meta = pod.get("metadata") or {}
        node = (pod.get("spec") or {}).get("nodeName")
        return bool(
            meta.get("deletionTimestamp")
            or self._annotated(pod)
            or meta.get("name") in self._drain_tasks
            or meta.get("name") in self._marking
            or node in self._disrupted_nodes
        )

    def _held(self, pool: Pool) -> int:
        """Draining pods the Deployment must still count (not terminating, not released)."""
        return sum(
            1
            for p in self._pods_of(pool)
            if self._draining(p)
            and not p["metadata"].get("deletionTimestamp")
            and p["metadata"]["name"] not in self._released
        )

    def _replica(self, pod: Mapping[str, Any], pool: Pool) -> Replica:
        meta, status = pod["metadata"], pod.get("status") or {}
        ip = status.get("podIP")
        host = (f"[{ip}]" if ":" in ip else ip) if ip else f"{meta['name']}.unscheduled.invalid"
        if self._draining(pod):
            state = ReplicaState.DRAINING
        elif _ready(pod):
            state = ReplicaState.READY
        else:
            state = ReplicaState.STARTING
        assert pool.profile is not None
        return Replica(
            meta["name"],
            pool.name,
            pool.model,
            f"http://{host}:{self.options.port}",
            pool.offering,
            pool.profile,
            state,
        )

    def _publish(self) -> list[Replica]:
        out = []
        for pod in self._pods.values():
            pool = self._pool_of(pod)
            if pool is not None and pool.profile is not None:
                out.append(self._replica(pod, pool))
        out.sort(key=lambda r: r.id)
        if out != self._last:
            self._last = out
            if self.on_change is not None:
                self.on_change(list(out))
        return out

    # -- changing the cluster -------------------------------------------------------------------
    async def _scale(self, pool: Pool, replicas: int) -> None:
        name = deployment_name(pool, self.options.name_prefix)
        try:
            current = await self.client.get(self._deployment_path(name))
        except KubeApiError as exc:
            if exc.status != 404:
                raise
            manifest = deployment_manifest(pool, replicas, self.options)
            await self.client.post(self._deployment_path(), manifest)
            log.info("created deployment %s with %d replicas", name, replicas)
            return
        if (current.get("spec") or {}).get("replicas") != replicas:
            await self.client.patch(
                self._deployment_path(name) + "/scale", scale_body(name, self._ns, replicas)
            )
            log.info("scaled deployment %s to %d", name, replicas)

    async def _begin_drain(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        busy = name in self._drain_tasks or name in self._marking
        if busy or pod["metadata"].get("deletionTimestamp"):
            return
        self._marking.add(name)
        try:
            if not self._annotated(pod):
                patch = {"metadata": {"annotations": {DRAINING: "true", DELETION_COST: "-1000"}}}
                updated = await self.client.patch(self._pod_path(name), patch)
                if isinstance(updated, dict) and updated.get("metadata"):
                    self._pods[name] = updated
            self._spawn_drain(name)
        finally:
            self._marking.discard(name)

    def _spawn_drain(self, name: str) -> None:
        task = asyncio.ensure_future(self._drain_then_release(name))
        self._drain_tasks[name] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)

    async def _drain_then_release(self, name: str) -> None:
        deadline = self.clock.now() + self.options.drain_timeout_s
        idle = 0
        while idle < 2 and self.clock.now() < deadline:
            await self._sleep_real(self.options.drain_poll_real_s)
            pod = self._pods.get(name)
            if pod is None:
                return  # gone already (the node went, or someone deleted it)
            n = await self._in_flight(pod)
            idle = idle + 1 if n == 0 else 0
        await self._release(name)

    async def _release(self, name: str) -> None:
        """The drained pod may go: lower the scale, and delete it if the ReplicaSet kept it."""
        pod = self._pods.get(name)
        self._drain_tasks.pop(name, None)
        if pod is None:
            return
        pool = self._pool_of(pod)
        self._released.add(name)
        if pool is not None:
            target = self._targets.get(pool.name)
            if target is None:
                target = sum(1 for p in self._pods_of(pool) if not self._draining(p))
            await self._scale(pool, target + self._held(pool))
        with contextlib.suppress(KubeApiError):
            current = await self.client.get(self._pod_path(name))
            if not current["metadata"].get("deletionTimestamp"):
                await self.client.delete(self._pod_path(name))
        log.info("released drained pod %s", name)
        await self._refresh()
        self._publish()

    async def _in_flight(self, pod: Mapping[str, Any]) -> int:
        """Running plus waiting from the pod's ``/metrics``; 0 when it cannot be reached."""
        ip = (pod.get("status") or {}).get("podIP")
        if not ip:
            return 0
        host = f"[{ip}]" if ":" in ip else ip
        url = f"http://{host}:{self.options.port}/metrics"
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as session,
                session.get(url) as resp,
            ):
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError):
            return 0
        return in_flight(text)

    # -- polling --------------------------------------------------------------------------------
    def _start_polling(self) -> None:
        if self._poller is None and not self._closed:
            self._poller = asyncio.ensure_future(self._poll())

    async def _poll(self) -> None:
        while True:
            await self._sleep_real(self.options.poll_real_s)
            try:
                await self._refresh()
                self._publish()
            except (KubeApiError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("listing pods and nodes failed: %s", exc)

    async def _sleep_real(self, seconds: float) -> None:
        unit = self.clock.real_seconds(1.0)
        await self.clock.sleep(seconds / unit if unit > 0 else seconds)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("kubernetes actuator task failed", exc_info=task.exception())
