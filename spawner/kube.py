"""The Kubernetes flavour: KubeSpawner with an NVIDIA and an AMD GPU profile.

Each vendor's device plugin places GPUs on Kubernetes, so this flavour claims no device
itself (``claim_devices`` stays the mixin's ``[]``, and a session's device list is empty).
Everything else comes from ``GPUSpawnerMixin``: the form, the access decision, the user
options and their per-project limit, the metered session and its close.

Two rules make the pods right:

- **No vendor leaks into the other's pod.** KubeSpawner applies ``profile_list`` overrides by
  *merging* them into the same spawner object, so an NVIDIA start followed by an AMD start
  on one spawner can ask for both vendors' GPUs, selectors and tolerations. This flavour
  does not use ``profile_list``: ``apply_gpu_profile`` rebuilds the vendor settings at every
  start from the configured values, after removing every vendor's GPU resources, node
  selector keys, tolerations and supplemental groups, then adds the chosen vendor's own.
- **What is metered is what the pod carries.** ``prepare_server`` builds the pod manifest
  (with ``modify_pod_hook``, as KubeSpawner will) before the session opens, and the
  session meters the GPU limits found in it, not the user options. The pod that is finally
  sent to the API server is checked once more against the metered count.

Storage: one PersistentVolumeClaim per person (``aipower-home-<name>``), the home directory
of all their servers, as ``<state>/homes/<name>`` is in the local flavour. The end-of-window
purge (``quota_service.lifecycle``) works per member and keeps the storage of a person still
in another open project; ``KubeHomePurger`` is its Kubernetes purger and deletes the
person's claims. Deleting a hub user never deletes them (``delete_pvc`` is off).
"""

from __future__ import annotations

import copy
import json
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol
from urllib.parse import quote

from jupyterhub.utils import maybe_future
from kubespawner import KubeSpawner
from kubespawner.slugs import is_valid_label, safe_slug
from traitlets import Dict, Unicode, default

from quota_service.client import QuotaServiceClient
from quota_service.lifecycle import Deleted
from quota_service.model_scans import ScanPod

from .base import GPUSpawnerMixin
from .gpu import Vendor
from .notebook import notebook_environment
from .options import GPURequest

DEFAULT_GPU_PROFILES = {
    "nvidia": {
        "resource": "nvidia.com/gpu",
        "node_selector": {"aipower.tw/gpu-vendor": "nvidia"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "supplemental_gids": [],
    },
    "amd": {
        "resource": "amd.com/gpu",
        "node_selector": {"aipower.tw/gpu-vendor": "amd"},
        "tolerations": [{"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        # /dev/kfd and /dev/dri/renderD* belong to the node's video and render groups
        "supplemental_gids": [44, 110],
    },
}

# resources that are GPUs whatever the profiles say: never left over from the configuration
WELL_KNOWN_GPU_RESOURCES = frozenset({"nvidia.com/gpu", "amd.com/gpu"})


@dataclass(frozen=True)
class GPUProfile:
    vendor: Vendor
    resource: str
    node_selector: dict[str, str]
    tolerations: list[dict]
    supplemental_gids: list[int]

    @classmethod
    def from_config(cls, vendor: Vendor, config: dict) -> GPUProfile:
        unknown = set(config) - {"resource", "node_selector", "tolerations", "supplemental_gids"}
        if unknown or not config.get("resource"):
            raise ValueError(f"GPU profile {vendor.value}: needs 'resource', unknown {unknown}")
        return cls(
            vendor,
            str(config["resource"]),
            {str(k): str(v) for k, v in (config.get("node_selector") or {}).items()},
            [dict(t) for t in config.get("tolerations") or []],
            [int(g) for g in config.get("supplemental_gids") or []],
        )


def _field(obj, name: str, camel: str | None = None):
    """A field of a Kubernetes model object or of its dict form (camelCase)."""
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(camel or name)
    return getattr(obj, name, None)


def gpu_limits_in_pod(pod, gpu_resources: Iterable[str]) -> dict[str, int]:
    """The GPUs a pod gets, per resource name, as the scheduler counts them: the sum over
    its containers, or the largest init container if that is more. ``pod`` is a V1Pod or
    its dict form. Raises ValueError for a GPU request that differs from its limit (the
    API server refuses those for extended resources anyway)."""
    names = set(gpu_resources)
    spec = _field(pod, "spec")

    def per_container(container) -> dict[str, int]:
        resources = _field(container, "resources") or {}
        limits = _field(resources, "limits") or {}
        requests = _field(resources, "requests") or {}
        found = {}
        for name in names:
            limit, request = limits.get(name), requests.get(name)
            if request is not None and str(request) != str(limit):
                raise ValueError(f"{name}: request {request} differs from limit {limit}")
            if limit is not None:
                found[name] = int(str(limit))
        return found

    totals: dict[str, int] = {}
    for container in _field(spec, "containers") or []:
        for name, count in per_container(container).items():
            totals[name] = totals.get(name, 0) + count
    for container in _field(spec, "init_containers", "initContainers") or []:
        for name, count in per_container(container).items():
            totals[name] = max(totals.get(name, 0), count)
    return {name: count for name, count in totals.items() if count}


class KubeGPUSpawner(GPUSpawnerMixin, KubeSpawner):
    """A KubeSpawner whose pods get exactly the chosen vendor's GPUs, image and nodes."""

    gpu_profiles = Dict(
        key_trait=Unicode(),
        value_trait=Dict(),
        default_value=copy.deepcopy(DEFAULT_GPU_PROFILES),
        help="""Scheduling of each vendor's servers, e.g. {"nvidia": {"resource":
        "nvidia.com/gpu", "node_selector": {"aipower.tw/gpu-vendor": "nvidia"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect":
        "NoSchedule"}], "supplemental_gids": []}, "amd": {...}}. The image is the mixin's
        `images[vendor]`. Every key of one vendor is removed from the other's pods.""",
    ).tag(config=True)

    notebook_package_dir = Unicode(
        "/usr/local/lib/python3.12/site-packages/spawner/notebook",
        help="""Where ``spawner.notebook`` (the balance in JupyterLab's status bar) lies in
        the notebook images, e.g. the default, which is where images/cuda and images/rocm
        install it.""",
    ).tag(config=True)

    notebook_quota_url = Unicode(
        "",
        help="""The quota service as the servers reach it, e.g.
        "http://aipower-quota:10101/services/quota"; empty: where the hub reaches it
        (``QuotaServiceClient.url``).""",
    ).tag(config=True)

    @default("pvc_name_template")
    def _default_pvc_name_template(self):
        return "aipower-home-{username}"

    @default("delete_pvc")
    def _default_delete_pvc(self):
        # the end-of-window purge decides when a person's storage goes, not a user deletion
        return False

    _configured: dict | None = None
    _profile_request: GPURequest | None = None

    # ---- the vendor seam -------------------------------------------------------------

    def profile(self, vendor: Vendor) -> GPUProfile:
        return GPUProfile.from_config(vendor, self.gpu_profiles[vendor.value])

    def gpu_resource_names(self) -> set[str]:
        return {self.profile(v).resource for v in Vendor} | WELL_KNOWN_GPU_RESOURCES

    def _configured_values(self) -> dict:
        # the values as configured, before any start changed them on this reused object
        if self._configured is None:
            tolerations = self.tolerations
            gids = self.supplemental_gids
            self._configured = copy.deepcopy(
                {
                    "extra_resource_limits": dict(self.extra_resource_limits),
                    "extra_resource_guarantees": dict(self.extra_resource_guarantees),
                    "node_selector": dict(self.node_selector),
                    "tolerations": list(self._sorted_dict_values(tolerations)),
                    "supplemental_gids": list(gids) if isinstance(gids, list) else [],
                }
            )
        return copy.deepcopy(self._configured)

    def apply_gpu_profile(self, request: GPURequest) -> None:
        """Set the GPU resources, image, node selector, tolerations and groups of
        ``request``'s vendor, from the configured values and nothing left from an earlier
        start; every key that any vendor uses is removed first."""
        own = self.profile(request.vendor)
        profiles = [self.profile(v) for v in Vendor]
        resources = self.gpu_resource_names()
        selector_keys = {k for p in profiles for k in p.node_selector}
        toleration_keys = {t.get("key") for p in profiles for t in p.tolerations}
        vendor_gids = {g for p in profiles for g in p.supplemental_gids}
        base = self._configured_values()

        limits = {k: v for k, v in base["extra_resource_limits"].items() if k not in resources}
        limits[own.resource] = str(request.count)
        self.extra_resource_limits = limits
        # extended resources: the request defaults to the limit; none is set separately
        self.extra_resource_guarantees = {
            k: v for k, v in base["extra_resource_guarantees"].items() if k not in resources
        }
        selector = {k: v for k, v in base["node_selector"].items() if k not in selector_keys}
        self.node_selector = selector | own.node_selector
        self.tolerations = [
            t for t in base["tolerations"] if t.get("key") not in toleration_keys
        ] + copy.deepcopy(own.tolerations)
        self.supplemental_gids = [
            g for g in base["supplemental_gids"] if g not in vendor_gids
        ] + list(own.supplemental_gids)
        self.image = self.images[request.vendor.value]

    async def load_user_options(self):
        # KubeSpawner would merge profile_list overrides into this reused object here;
        # the GPU profile is applied instead, from the configured values, every start
        if self._profile_request is None:
            raise RuntimeError("KubeGPUSpawner starts only through GPUSpawnerMixin.start()")
        if self.profile_list:
            self.log.warning("KubeSpawner.profile_list is ignored: GPU profiles apply")
        self.apply_gpu_profile(self._profile_request)

    # ---- what is metered ---------------------------------------------------------------

    def gpus_of(self, pod) -> GPURequest | None:
        """The vendor and count that ``pod`` really carries; None unless it is exactly one
        vendor's GPUs."""
        limits = gpu_limits_in_pod(pod, self.gpu_resource_names())
        carried = [
            (v, limits[self.profile(v).resource])
            for v in Vendor
            if self.profile(v).resource in limits
        ]
        if len(carried) != 1 or set(limits) != {self.profile(carried[0][0]).resource}:
            return None
        vendor, count = carried[0]
        return GPURequest(vendor, count)

    async def build_pod(self):
        """The pod manifest as KubeSpawner will send it (``modify_pod_hook`` included)."""
        pod = await self.get_pod_manifest()
        if self.modify_pod_hook:
            pod = await maybe_future(self.modify_pod_hook(self, pod))
        return pod

    async def prepare_server(self, request: GPURequest) -> GPURequest:
        self._profile_request = request
        self.apply_gpu_profile(request)
        try:
            carried = self.gpus_of(await self.build_pod())
        except ValueError as e:
            self.log.error("Pod of %s has inconsistent GPU resources: %s", self.user.name, e)
            carried = None
        if carried is None:
            self.refuse(
                "伺服器設定錯誤，GPU 資源不一致，未啟動。 / The server's GPU resources are "
                "misconfigured, so it was not started; please tell the operator.",
                reason="gpu-misconfigured",
                status_code=500,
            )
        if carried != request:
            self.log.warning(
                "%s asked for %d %s GPU(s); the pod carries %d %s: metering the pod",
                self.user.name,
                request.count,
                request.vendor.label,
                carried.count,
                carried.vendor.label,
            )
        return carried

    _creating_pod = False

    async def _make_create_pod_request(self, pod, request_timeout):
        # the last look before the pod exists: it must carry what the session meters
        try:
            carried = self.gpus_of(pod)
        except ValueError:
            carried = None
        if carried is None or carried != self.gpu_request:
            raise RuntimeError(
                f"pod GPUs {carried} differ from the metered {self.gpu_request}: not created"
            )
        self._creating_pod = True
        try:
            return await super()._make_create_pod_request(pod, request_timeout)
        finally:
            self._creating_pod = False

    async def stop(self, now=False):
        if self._creating_pod:
            # KubeSpawner deletes a stale pod of the same name (409) before creating this
            # start's: that is no stop of the server being metered, whose session stays open
            return await KubeSpawner.stop(self, now=now)
        return await super().stop(now=now)

    def get_env(self):
        env = super().get_env()
        if self.gpu_request is not None:
            env["AIPOWER_GPU_VENDOR"] = self.gpu_request.vendor.value
            env["AIPOWER_GPU_COUNT"] = str(self.gpu_request.count)
            env["AIPOWER_NOTEBOOK_IMAGE"] = self.image
        # the project's balance in JupyterLab's status bar (spawner/notebook), from the copy of
        # this package in the image
        quota_url = self.notebook_quota_url or QuotaServiceClient.instance(parent=self).url
        env.update(notebook_environment(quota_url, package_dir=self.notebook_package_dir, base=env))
        return env


def username_label(username: str) -> str:
    """A person's ``hub.jupyter.org/username`` label, as KubeSpawner makes it."""
    return safe_slug(username, is_valid=is_valid_label)


def home_claim_selector(username: str) -> str:
    """Label selector of a person's volume claims, as KubeSpawner labels them."""
    return f"component=singleuser-storage,hub.jupyter.org/username={username_label(username)}"


class Transport(Protocol):
    """One request to the Kubernetes API server: the status and the answer, decoded JSON
    (a str for a text answer such as a pod's log)."""

    def __call__(self, method: str, path: str, body: dict | None = None) -> tuple[int, Any]: ...


SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


def in_cluster_transport(timeout: float = 30.0) -> Transport:
    """Requests to the API server with the pod's service account (no client library: the
    purge and the model scan run in the quota service's synchronous housekeeping job)."""
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    base = f"https://{host}:{port}" if ":" not in host else f"https://[{host}]:{port}"
    context = ssl.create_default_context(cafile=f"{SERVICE_ACCOUNT}/ca.crt")

    def send(method: str, path: str, body: dict | None = None) -> tuple[int, Any]:
        with open(f"{SERVICE_ACCOUNT}/token") as f:  # rotated by the kubelet: read each time
            token = f.read().strip()
        headers = {"Authorization": f"Bearer {token}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
                answer = response.read()
                if response.headers.get_content_type() == "application/json":
                    return response.status, json.loads(answer or b"{}")
                return response.status, answer.decode("utf-8", errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, {}

    return send


class NamespacedAPI:
    """Requests about one namespace's objects, through a transport (the pod's service account
    unless one is given)."""

    def __init__(self, namespace: str, transport: Transport | None = None):
        self.namespace = namespace
        self._transport = transport

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            self._transport = in_cluster_transport()
        return self._transport

    def path(self, resource: str, name: str = "") -> str:
        path = f"/api/v1/namespaces/{quote(self.namespace, safe='')}/{resource}"
        return f"{path}/{quote(name, safe='')}" if name else path

    def list(self, resource: str, selector: str) -> list[dict]:
        query = f"?labelSelector={quote(selector, safe='')}"
        status, listing = self.transport("GET", self.path(resource) + query)
        if status != 200:
            raise RuntimeError(f"listing {resource} ({selector}): HTTP {status}")
        return listing.get("items", [])

    def home_claims(self, username: str) -> list[dict]:
        return self.list("persistentvolumeclaims", home_claim_selector(username))


class KubeHomePurger(NamespacedAPI):
    """``quota_service.lifecycle.StoragePurger`` for Kubernetes: deletes a person's volume
    claims (every claim KubeSpawner labelled with their name, whatever its name template).
    The StorageClass's reclaim policy decides whether the data go with the claim: use
    ``Delete``. Needs ``list`` and ``delete`` on persistentvolumeclaims in the namespace."""

    def purge(self, username: str) -> list[Deleted]:
        deleted = []
        for claim in self.home_claims(username):
            name = claim["metadata"]["name"]
            size = claim.get("status", {}).get("capacity", {}).get("storage", "?")
            status, _ = self.transport("DELETE", self.path("persistentvolumeclaims", name))
            if status not in (200, 202, 404):
                raise RuntimeError(f"deleting volume claim {name}: HTTP {status}")
            # a volume's files are not counted: the record names the claim and its size
            deleted.append(Deleted(f"pvc {self.namespace}/{name} ({size})", 0, 0))
        return deleted


# ---- the scheduled banned-model scan of the people's volumes ---------------------------------

SCAN_COMPONENT = "model-scan"
SCAN_LABELS = {
    "app.kubernetes.io/name": "aipower-hub",
    "app.kubernetes.io/component": SCAN_COMPONENT,
}
# the username itself (a label holds only its slug)
USERNAME_ANNOTATION = "aipower.tw/username"
SCAN_ROOT = "/homes"


def scan_pod_name(username: str) -> str:
    """One name per person, so the API server itself refuses a second scan pod (409)."""
    return "aipower-scan-" + username_label(username)


@dataclass(frozen=True)
class ScanPodSettings:
    image: str  # one with aipower-scan-models: the hub image
    rules: list[dict]  # the operator's (BannedModels.rules)
    deadline: timedelta  # activeDeadlineSeconds
    resources: dict  # Kubernetes ResourceRequirements, limits included
    uid: int  # the servers' user and file group: reads what their owners can
    gid: int


def scan_pod(
    username: str, claims: list[str], settings: ScanPodSettings, server: dict | None = None
) -> dict:
    """The pod that scans ``claims`` (mounted read-only under /homes/<claim>) with
    ``aipower-scan-models``: no network (the chart's NetworkPolicy), no service account
    token, not root, no privileges, limited resources, ended by its deadline. ``server``, a
    running server pod of the person, pins it to that pod's node with that pod's tolerations
    (a ReadWriteOnce volume attaches to one node at a time)."""
    volumes = [
        {
            "name": f"home-{i}",
            "persistentVolumeClaim": {"claimName": claim, "readOnly": True},
        }
        for i, claim in enumerate(claims)
    ]
    mounts = [
        {"name": f"home-{i}", "mountPath": f"{SCAN_ROOT}/{claim}", "readOnly": True}
        for i, claim in enumerate(claims)
    ]
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": int(settings.deadline.total_seconds()),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.uid,
            "runAsGroup": settings.gid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "scan",
                "image": settings.image,
                "command": [
                    "aipower-scan-models",
                    SCAN_ROOT,
                    "--rules-json",
                    json.dumps(settings.rules),
                ],
                "env": [{"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}],
                "resources": copy.deepcopy(settings.resources),
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": mounts,
            }
        ],
        "volumes": volumes,
    }
    node = (server or {}).get("spec", {}).get("nodeName")
    if node:
        # what the DaemonSet controller does: the scheduler still checks the node's room
        term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
        spec["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}
            }
        }
        if server["spec"].get("tolerations"):
            spec["tolerations"] = copy.deepcopy(server["spec"]["tolerations"])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": scan_pod_name(username),
            "labels": SCAN_LABELS | {"hub.jupyter.org/username": username_label(username)},
            "annotations": {USERNAME_ANNOTATION: username},
        },
        "spec": spec,
    }


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def scan_pod_state(pod: dict) -> ScanPod:
    """What the scan needs to know of a scan pod from the API server."""
    status = pod.get("status", {})
    (scan,) = [c for c in status.get("containerStatuses", []) if c.get("name") == "scan"] or [{}]
    ended = scan.get("state", {}).get("terminated") or {}
    phase = status.get("phase", "Pending")
    return ScanPod(
        name=pod["metadata"]["name"],
        username=pod["metadata"].get("annotations", {}).get(USERNAME_ANNOTATION, ""),
        claims=tuple(
            v["persistentVolumeClaim"]["claimName"]
            for v in pod["spec"].get("volumes", [])
            if "persistentVolumeClaim" in v
        ),
        created=_time(pod["metadata"]["creationTimestamp"]),
        finished=phase in ("Succeeded", "Failed"),
        exit_code=ended.get("exitCode"),
        started=_time(ended.get("startedAt")),
        reason=status.get("reason") or ended.get("reason") or "",
    )


class KubeScanPods(NamespacedAPI):
    """``quota_service.model_scans.ScanPods`` on Kubernetes: the person's volume claims,
    their scan pods and those pods' logs. Needs, in the namespace: list on
    persistentvolumeclaims; create, get, list and delete on pods; get on pods/log."""

    def __init__(
        self, namespace: str, settings: ScanPodSettings, transport: Transport | None = None
    ):
        super().__init__(namespace, transport)
        self.settings = settings

    def home_claim_names(self, username: str) -> list[str]:
        return sorted(claim["metadata"]["name"] for claim in self.home_claims(username))

    def scan_pods(self) -> list[ScanPod]:
        selector = ",".join(f"{k}={v}" for k, v in SCAN_LABELS.items())
        return [scan_pod_state(pod) for pod in self.list("pods", selector)]

    def running_server(self, username: str) -> dict | None:
        selector = (
            f"component=singleuser-server,hub.jupyter.org/username={username_label(username)}"
        )
        running = [
            pod
            for pod in self.list("pods", selector)
            if pod.get("status", {}).get("phase") == "Running" and pod["spec"].get("nodeName")
        ]
        return min(running, key=lambda pod: pod["metadata"]["name"], default=None)

    def create(self, username: str, claims: list[str]) -> bool:
        pod = scan_pod(username, claims, self.settings, self.running_server(username))
        status, _ = self.transport("POST", self.path("pods"), pod)
        if status == 409:
            return False
        if status not in (200, 201, 202):
            raise RuntimeError(f"creating scan pod {pod['metadata']['name']}: HTTP {status}")
        return True

    def log(self, name: str) -> str | None:
        status, text = self.transport("GET", self.path("pods", name) + "/log?container=scan")
        return text if status == 200 and isinstance(text, str) else None

    def delete(self, name: str) -> None:
        status, _ = self.transport("DELETE", self.path("pods", name))
        if status not in (200, 202, 404):
            raise RuntimeError(f"deleting scan pod {name}: HTTP {status}")
