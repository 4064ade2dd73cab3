"""Kubernetes without a cluster: what the Kubernetes tests share.

No API server can run on these machines (no kube-apiserver, k3s, kind or kwok), so:

- ``FakeCoreV1Api`` stands in for ``kubernetes_asyncio``'s ``CoreV1Api``: it keeps pods
  and volume claims in dictionaries, answers 409 for a second create like the API server,
  and a created pod is at once "Running" in ``FakePodReflector`` (what KubeSpawner's pod
  watch would see). Scheduling, the device plugins and the kubelet are not simulated.
- ``patch_kubespawner`` patches ``kubespawner.spawner.load_config`` and
  ``shared_client`` (the documented way to build KubeSpawner pods offline).
- ``validate`` checks an object against the Kubernetes OpenAPI schema of a current
  version with ``kubernetes-validate --strict`` (unknown fields refused).
"""

from __future__ import annotations

import copy

import kubernetes_validate
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

# a current Kubernetes release, and the oldest that the z2jh 4.4 chart supports
KUBERNETES_VERSIONS = ("1.35.0", "1.28.0")


def as_dict(model) -> dict:
    """A kubernetes_asyncio model as the API server gets it (camelCase, no None)."""
    # sanitize_for_serialization needs no client state (and no event loop)
    return ApiClient.__new__(ApiClient).sanitize_for_serialization(model)


def validate(obj: dict) -> None:
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


class FakePodReflector:
    def __init__(self):
        self.pods: dict[str, dict] = {}


class FakeCoreV1Api:
    def __init__(self, reflector: FakePodReflector):
        self.reflector = reflector
        self.created_pods: list[dict] = []
        self.claims: dict[str, dict] = {}
        self.created_claims: list[dict] = []
        self.deleted_claims: list[str] = []

    async def create_namespaced_pod(self, namespace, body):
        pod = as_dict(body)
        key = f"{namespace}/{pod['metadata']['name']}"
        if key in self.reflector.pods:
            raise ApiException(status=409, reason="AlreadyExists")
        self.created_pods.append(copy.deepcopy(pod))
        pod["metadata"]["uid"] = f"uid-{len(self.created_pods)}"
        pod["status"] = {
            "phase": "Running",
            "podIP": f"10.0.0.{len(self.created_pods)}",
            "containerStatuses": [{"name": "notebook", "ready": True, "state": {"running": {}}}],
        }
        self.reflector.pods[key] = pod

    async def delete_namespaced_pod(self, name, namespace, **kwargs):
        if self.reflector.pods.pop(f"{namespace}/{name}", None) is None:
            raise ApiException(status=404, reason="NotFound")

    async def create_namespaced_persistent_volume_claim(self, namespace, body):
        claim = as_dict(body)
        if claim["metadata"]["name"] in self.claims:
            raise ApiException(status=409, reason="AlreadyExists")
        self.created_claims.append(claim)
        self.claims[claim["metadata"]["name"]] = claim

    async def delete_namespaced_persistent_volume_claim(self, name, namespace, **kwargs):
        if self.claims.pop(name, None) is None:
            raise ApiException(status=404, reason="NotFound")
        self.deleted_claims.append(name)


def patch_kubespawner(monkeypatch) -> FakeCoreV1Api:
    """KubeSpawner with the Kubernetes client patched out; returns the fake API."""
    import kubespawner.spawner as ks

    reflector = FakePodReflector()
    api = FakeCoreV1Api(reflector)
    monkeypatch.setattr(ks, "load_config", lambda **kwargs: None)
    monkeypatch.setattr(ks, "shared_client", lambda kind, *a, **kw: api)

    async def watching(self, replace=False):
        ks.KubeSpawner.reflectors[self._get_reflector_key("pods")] = reflector
        return reflector

    monkeypatch.setattr(ks.KubeSpawner, "_start_watching_pods", watching)
    monkeypatch.setattr(ks.KubeSpawner, "reflectors", {})
    return api


class FakeQuota:
    """The quota service's answers for one approved project (id 7, 2 GPUs per server)."""

    def __init__(self, project_id: int = 7, max_gpus: int = 2):
        self.project = {
            "id": project_id,
            "name": "示範智能 L1",
            "balance_points": "1000",
            "max_gpus_per_server": max_gpus,
        }
        self.opened: list[dict] = []
        self.closed: list[tuple] = []

    async def access(self, username):
        return {"may_spawn": True, "groups": ["gpu-users"], "project": self.project}

    async def open_session(self, **request):
        self.opened.append(request)
        return {"session_id": len(self.opened)}

    async def close_session(self, session_id, *, reason="", void=False):
        self.closed.append((session_id, reason, void))
        return {"charged_seconds": 0}
