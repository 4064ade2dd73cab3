"""The Kubernetes flavour, offline: real KubeSpawner code, a fake Kubernetes API.

Every start goes through ``GPUSpawnerMixin.start()`` and KubeSpawner's own ``_start()``;
what is replaced (see ``tests/kube_offline.py``) is the Kubernetes API server (an in-memory
``CoreV1Api``) and the quota service (``FakeQuota`` records the sessions it is asked to open
and close; the real service's checks are tested in ``test_metering.py`` and end to end).
The pods checked are the ones the spawner sent to the API, validated against the
Kubernetes schema with ``kubernetes-validate --strict``.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from urllib.parse import unquote

import pytest
from traitlets.config import Config

from spawner.kube import KubeGPUSpawner, KubeHomePurger
from tests.kube_offline import FakeQuota, as_dict, patch_kubespawner, validate

try:  # JupyterHub 6 refuses with SpawnException, 5.5 with tornado's HTTPError
    from jupyterhub.spawner import SpawnException as Refused
except ImportError:
    from tornado.web import HTTPError as Refused

NAMESPACE = "aipower"
IMAGES = {
    "nvidia": "registry.example.tw/aipower/cuda-notebook:2026.11",
    "amd": "registry.example.tw/aipower/rocm-notebook:2026.11",
}
# what the z2jh chart's hub configuration gives every user pod (scheduling.userPods)
Z2JH_TOLERATIONS = [
    {
        "key": "hub.jupyter.org/dedicated",
        "operator": "Equal",
        "value": "user",
        "effect": "NoSchedule",
    },
    {
        "key": "hub.jupyter.org_dedicated",
        "operator": "Equal",
        "value": "user",
        "effect": "NoSchedule",
    },
]
NVIDIA_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
AMD_TOLERATION = {"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def z2jh_config(**kube) -> Config:
    """KubeSpawner settings as the z2jh 4.4 hub configuration derives them from our
    chart's values (dynamic storage, user-pod tolerations, uid/fsGid), plus ``kube``."""
    c = Config()
    c.KubeSpawner.namespace = NAMESPACE
    c.KubeSpawner.events_enabled = False
    c.KubeSpawner.cmd = ["jupyterhub-singleuser"]
    c.KubeSpawner.uid = 1000
    c.KubeSpawner.fs_gid = 100
    c.KubeSpawner.tolerations = list(Z2JH_TOLERATIONS)
    c.KubeSpawner.storage_pvc_ensure = True
    c.KubeSpawner.storage_access_modes = ["ReadWriteMany"]
    c.KubeSpawner.storage_capacity = "200Gi"
    c.KubeSpawner.volumes = {
        "volume-{user_server}": {
            "name": "volume-{user_server}",
            "persistentVolumeClaim": {"claimName": "{pvc_name}"},
        }
    }
    c.KubeSpawner.volume_mounts = {
        "volume-{user_server}": {"mountPath": "/home/jovyan", "name": "volume-{user_server}"}
    }
    c.KubeGPUSpawner.images = dict(IMAGES)
    c.KubeGPUSpawner.notebook_quota_url = "http://aipower-quota:10101/services/quota/"
    for name, value in kube.items():
        setattr(c.KubeGPUSpawner, name, value)
    return c


def make_spawner(
    quota: FakeQuota, config: Config | None = None, name: str = "trainee", server: str = ""
):
    user = SimpleNamespace(name=name, id=1, url=f"/user/{name}/", settings={})
    orm_spawner = SimpleNamespace(name=server, server=None)  # a named server's name comes from here
    spawner = KubeGPUSpawner(
        _mock=True, user=user, orm_spawner=orm_spawner, config=config or z2jh_config()
    )
    spawner.quota_client = quota
    return spawner


@pytest.fixture
def api(monkeypatch):
    return patch_kubespawner(monkeypatch)


@pytest.fixture(autouse=True)
def fake_quota_property(monkeypatch):
    monkeypatch.setattr(KubeGPUSpawner, "quota", property(lambda self: self.quota_client))


async def start(spawner, vendor: str, count: int):
    spawner.user_options = {"gpu_vendor": vendor, "gpu_count": count}
    return await spawner.start()


def notebook(pod: dict) -> dict:
    (container,) = [c for c in pod["spec"]["containers"] if c["name"] == "notebook"]
    return container


def gpu_keys(pod: dict) -> dict:
    limits = notebook(pod)["resources"].get("limits", {})
    return {k: v for k, v in limits.items() if k.endswith("/gpu")}


# ---- the vendor sequence ------------------------------------------------------------------


async def test_nvidia_2_then_amd_1_then_nvidia_1_on_one_spawner(api):
    quota = FakeQuota()
    spawner = make_spawner(quota)
    expected = [
        ("nvidia", 2, "nvidia.com/gpu", NVIDIA_TOLERATION, None),
        ("amd", 1, "amd.com/gpu", AMD_TOLERATION, [44, 110]),
        ("nvidia", 1, "nvidia.com/gpu", NVIDIA_TOLERATION, None),
    ]
    for vendor, count, resource, toleration, groups in expected:
        url = await start(spawner, vendor, count)
        assert url.startswith("http://10.0.0.") and url.endswith(":8888")
        pod = api.created_pods[-1]
        validate(pod)
        text = json.dumps(pod)
        other = "amd" if vendor == "nvidia" else "nvidia"
        assert f"{other}.com" not in text and f'"{other}"' not in text  # nothing of the other
        assert gpu_keys(pod) == {resource: str(count)}
        assert notebook(pod)["resources"]["requests"].get(resource) is None
        assert pod["spec"]["nodeSelector"] == {"aipower.tw/gpu-vendor": vendor}
        assert pod["spec"]["tolerations"] == [*Z2JH_TOLERATIONS, toleration]
        assert pod["spec"]["securityContext"].get("supplementalGroups") == groups
        assert notebook(pod)["image"] == IMAGES[vendor]
        env = {e["name"]: e.get("value") for e in notebook(pod)["env"]}
        assert (env["AIPOWER_GPU_VENDOR"], env["AIPOWER_GPU_COUNT"]) == (vendor, str(count))
        # the balance in JupyterLab: spawner.notebook as the notebook images install it
        in_image = "/usr/local/lib/python3.12/site-packages/spawner/notebook"
        assert env["JUPYTER_PATH"] == f"{in_image}/share/jupyter"
        assert env["JUPYTER_CONFIG_PATH"] == f"{in_image}/etc/jupyter"
        assert env["AIPOWER_QUOTA_URL"] == "http://aipower-quota:10101/services/quota"
        # metered as the pod carries it, with no device list: the device plugin places GPUs
        opened = quota.opened[-1]
        assert (opened["gpu_vendor"], opened["gpu_count"], opened["devices"]) == (vendor, count, [])
        assert opened["simulated"] is False
        await spawner.stop()
        assert quota.closed[-1] == (len(quota.opened), "", False)
        assert api.reflector.pods == {}
    assert len(api.created_pods) == 3


async def test_stock_kubespawner_profiles_leak_between_vendors(api):
    """The pitfall the flavour avoids, shown on stock KubeSpawner: profile overrides are
    merged into the reused spawner, so an AMD start after an NVIDIA one asks for both."""
    from kubespawner import KubeSpawner

    c = z2jh_config()
    c.KubeSpawner.profile_list = [
        {
            "display_name": "NVIDIA",
            "slug": "nvidia",
            "kubespawner_override": {
                "extra_resource_limits": {"nvidia.com/gpu": "2"},
                "node_selector": {"aipower.tw/gpu-vendor": "nvidia"},
            },
        },
        {
            "display_name": "AMD",
            "slug": "amd",
            "kubespawner_override": {
                "extra_resource_limits": {"amd.com/gpu": "1"},
                "node_selector": {"aipower.tw/gpu-vendor": "amd"},
            },
        },
    ]
    user = SimpleNamespace(name="trainee", id=1, url="/user/trainee/", settings={})
    stock = KubeSpawner(_mock=True, user=user, config=c)
    for slug in ("nvidia", "amd"):
        stock.user_options = {"profile": slug}
        await stock.load_user_options()
    pod = as_dict(await stock.get_pod_manifest())
    assert gpu_keys(pod) == {"nvidia.com/gpu": "2", "amd.com/gpu": "1"}  # both vendors


async def test_configured_gpu_keys_never_reach_the_other_vendor(api):
    # an operator's settings that name GPU keys (e.g. singleuser.extraResource, nodeSelector)
    quota = FakeQuota()
    config = z2jh_config(
        extra_resource_limits={"amd.com/gpu": "8", "example.com/fpga": "1"},
        node_selector={"aipower.tw/gpu-vendor": "amd", "topology.kubernetes.io/zone": "tpe-1"},
        tolerations=[*Z2JH_TOLERATIONS, AMD_TOLERATION],
        supplemental_gids=[44, 110, 2000],
    )
    spawner = make_spawner(quota, config)
    await start(spawner, "nvidia", 1)
    pod = api.created_pods[-1]
    validate(pod)
    assert notebook(pod)["resources"]["limits"] == {"nvidia.com/gpu": "1", "example.com/fpga": "1"}
    assert pod["spec"]["nodeSelector"] == {
        "aipower.tw/gpu-vendor": "nvidia",
        "topology.kubernetes.io/zone": "tpe-1",
    }
    assert pod["spec"]["tolerations"] == [*Z2JH_TOLERATIONS, NVIDIA_TOLERATION]
    assert pod["spec"]["securityContext"]["supplementalGroups"] == [2000]
    assert "amd.com" not in json.dumps(pod)


# ---- what is metered is what the pod carries --------------------------------------------


async def test_the_session_meters_the_pods_gpu_limit_not_the_user_option(api):
    quota = FakeQuota()

    def one_gpu_only(spawner, pod):  # e.g. an operator's hook during a shortage
        pod.spec.containers[0].resources.limits["nvidia.com/gpu"] = "1"
        return pod

    spawner = make_spawner(quota, z2jh_config(modify_pod_hook=one_gpu_only))
    await start(spawner, "nvidia", 2)
    assert gpu_keys(api.created_pods[-1]) == {"nvidia.com/gpu": "1"}
    assert quota.opened[-1]["gpu_count"] == 1
    assert spawner.gpu_request.count == 1


async def test_a_pod_with_both_vendors_is_refused_before_anything_is_metered(
    api,
):
    quota = FakeQuota()

    def add_amd(spawner, pod):
        pod.spec.containers[0].resources.limits["amd.com/gpu"] = "1"
        return pod

    spawner = make_spawner(quota, z2jh_config(modify_pod_hook=add_amd))
    with pytest.raises(Refused) as refused:
        await start(spawner, "nvidia", 1)
    assert refused.value.status_code == 500 and "misconfigured" in str(refused.value)
    assert quota.opened == [] and api.created_pods == [] and api.created_claims == []


async def test_a_pod_that_changed_after_metering_is_never_created(api):
    quota = FakeQuota()
    builds = []

    def drifting(spawner, pod):  # gives one more GPU every time it runs
        builds.append(pod)
        pod.spec.containers[0].resources.limits["nvidia.com/gpu"] = str(len(builds))
        return pod

    spawner = make_spawner(quota, z2jh_config(modify_pod_hook=drifting))
    with pytest.raises(RuntimeError, match="differ from the metered"):
        await start(spawner, "nvidia", 1)
    assert api.created_pods == []
    assert quota.opened[-1]["gpu_count"] == 1
    assert quota.closed == [(1, "start failed", True)]  # voided: nothing charged


async def test_a_stale_pod_of_the_same_name_is_replaced_and_the_new_one_stays_metered(api):
    quota = FakeQuota()
    spawner = make_spawner(quota)
    # left over from before a hub restart, say: the same name, still there
    api.reflector.pods[f"{NAMESPACE}/{spawner.pod_name}"] = {"metadata": {"name": "stale"}}
    await start(spawner, "nvidia", 1)
    assert len(api.created_pods) == 1 and gpu_keys(api.created_pods[0]) == {"nvidia.com/gpu": "1"}
    assert (
        quota.closed == [] and spawner.session_id == 1
    )  # KubeSpawner's stop(True) of the stale pod
    await spawner.stop()
    assert quota.closed == [(1, "", False)]


async def test_refusals_are_the_shared_ones(api):
    quota = FakeQuota(max_gpus=2)
    spawner = make_spawner(quota)
    with pytest.raises(Refused) as refused:
        await start(spawner, "nvidia", 3)
    assert refused.value.status_code == 400 and "limit of 2" in str(refused.value)
    with pytest.raises(Refused) as refused:
        await start(spawner, "intel", 1)
    assert refused.value.status_code == 400 and "unknown GPU vendor" in str(refused.value)
    assert quota.opened == [] and api.created_pods == []


# ---- storage: one volume per person ------------------------------------------------------


async def test_every_server_of_a_person_mounts_their_home_volume(api):
    quota = FakeQuota()
    default, named = make_spawner(quota), make_spawner(quota, server="amd-box")
    colleague = make_spawner(quota, name="colleague")
    await start(default, "nvidia", 1)
    await start(named, "amd", 1)  # at the same time, on another node: ReadWriteMany
    await start(colleague, "nvidia", 2)
    claims = []
    for pod in api.created_pods:
        (volume,) = pod["spec"]["volumes"]
        claims.append(volume["persistentVolumeClaim"]["claimName"])
        (mount,) = notebook(pod)["volumeMounts"]
        assert (mount["name"], mount["mountPath"]) == (volume["name"], "/home/jovyan")
    assert claims == ["aipower-home-trainee", "aipower-home-trainee", "aipower-home-colleague"]
    # each claim created once (the second start of trainee's found it: 409)
    assert [c["metadata"]["name"] for c in api.created_claims] == [
        "aipower-home-trainee",
        "aipower-home-colleague",
    ]
    for claim in api.created_claims:
        validate(claim)
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
        assert claim["spec"]["resources"]["requests"]["storage"] == "200Gi"


async def test_deleting_a_user_keeps_their_volume_for_the_purge_to_decide(api):
    spawner = make_spawner(FakeQuota())
    await start(spawner, "nvidia", 1)
    await spawner.stop()
    await spawner.delete_forever()
    assert api.deleted_claims == [] and "aipower-home-trainee" in api.claims


def transport_for(api):
    """The purger's requests answered from the fake API's claims (GET list, DELETE)."""
    requests = []

    def send(method, path):
        requests.append((method, path))
        prefix = f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims"
        assert path.startswith(prefix)
        if method == "GET":
            selector = unquote(path.split("?labelSelector=")[1])
            wanted = dict(item.split("=") for item in selector.split(","))
            items = [
                claim
                for claim in api.claims.values()
                if wanted.items() <= claim["metadata"]["labels"].items()
            ]
            return 200, {"items": items}
        name = unquote(path[len(prefix) + 1 :])
        if api.claims.pop(name, None) is None:
            return 404, {}
        return 200, {}

    return send, requests


@pytest.mark.parametrize("username", ["trainee", "王小明@example.tw", "Trainee.Two", "a" * 70])
async def test_the_purge_deletes_exactly_that_persons_volume(api, username):
    for name in (username, "colleague"):
        spawner = make_spawner(FakeQuota(), name=name)
        await start(spawner, "amd", 1)
        await spawner.stop()
    claim_name = make_spawner(FakeQuota(), name=username).pvc_name
    validate(api.claims[claim_name])  # a valid object name, whatever the username
    send, requests = transport_for(api)
    purger = KubeHomePurger(NAMESPACE, transport=send)
    (deleted,) = purger.purge(username)
    assert deleted.path == f"pvc {NAMESPACE}/{claim_name} (?)"
    assert sorted(api.claims) == ["aipower-home-colleague"]
    assert [method for method, _ in requests] == ["GET", "DELETE"]
    assert purger.purge(username) == []  # run again: nothing left, nothing fails


def test_the_purge_stops_on_an_api_error():
    def forbidden(method, path):
        return 403, {}

    with pytest.raises(RuntimeError, match="HTTP 403"):
        KubeHomePurger(NAMESPACE, transport=forbidden).purge("trainee")


# ---- the rest of the hub's view ---------------------------------------------------------


async def test_a_hub_restart_keeps_the_session_and_stop_closes_it(api):
    quota = FakeQuota()
    spawner = make_spawner(quota)
    await start(spawner, "amd", 2)
    state = spawner.get_state()
    restarted = make_spawner(quota)
    restarted.load_state(state)
    assert restarted.session_id == 1 and restarted.gpu_request.count == 2
    assert await restarted.poll() is None  # the pod still runs
    await restarted.stop()
    assert quota.closed == [(1, "", False)]


async def test_the_form_is_the_platforms_without_device_counts(api):
    spawner = make_spawner(FakeQuota())
    form = await spawner.options_form(spawner)
    assert 'name="gpu_vendor"' in form and 'value="amd"' in form
    assert '<option value="2">2</option>' in form and '<option value="3">' not in form
    assert "free" not in form  # the cluster places GPUs: no count to show
    options = spawner.options_from_form({"gpu_vendor": ["amd"], "gpu_count": ["2"]})
    assert options == {"gpu_vendor": "amd", "gpu_count": "2"}
