"""The Zero to JupyterHub 4.4 chart, offline: what the chart tests use in its place.

Chart repositories cannot be reached here, so the chart's ``jupyterhub`` dependency cannot
be downloaded. Two stand-ins, both made from the chart's real ``values.yaml`` and
``values.schema.yaml`` (kept in ``../shared/data/z2jh-4.4.0/`` beside the repository):

- ``chart_with_stub_dependency`` copies our chart and puts a ``charts/jupyterhub`` next to
  it that has z2jh's values and schema but no templates. Helm then renders only our
  templates, validates our values against our schema *and* the ``jupyterhub:`` values
  against z2jh's schema, and lints without the "missing dependency" warning.
- ``z2jh_hub_config`` builds the hub's traitlets configuration the way z2jh 4.4's
  ``jupyterhub_config.py`` does (from the chart values, through ``z2jh.get_config``) for the
  parts our configuration relies on, then runs our ``hub.extraConfig`` in it, as the hub
  pod would. Its source: files/hub/jupyterhub_config.py of the z2jh 4.4.0 release.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import sys
import types
from pathlib import Path

import yaml
from traitlets.config import Config

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "aipower-hub"
EXAMPLES = REPO / "helm" / "examples"
Z2JH = REPO.parent / "shared" / "data" / "z2jh-4.4.0"


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def merge(base: dict, override: dict) -> dict:
    """Helm's coalescing of values: maps merge, anything else replaces, null deletes."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def chart_values(*overrides: dict) -> dict:
    """Our chart's values with ``overrides`` applied, as Helm computes them."""
    values = load_yaml(CHART / "values.yaml")
    for override in overrides:
        values = merge(values, override)
    return values


def jupyterhub_values(values: dict) -> dict:
    """What the jupyterhub chart gets: its defaults with our ``jupyterhub:`` on top."""
    return merge(load_yaml(Z2JH / "values.yaml"), values.get("jupyterhub", {}))


def z2jh_schema() -> dict:
    return load_yaml(Z2JH / "values.schema.yaml")


def chart_with_stub_dependency(directory: Path) -> Path:
    chart = directory / "aipower-hub"
    # without a real dependency that `helm dependency build` may have fetched here
    shutil.copytree(CHART, chart, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    stub = chart / "charts" / "jupyterhub"
    stub.mkdir(parents=True)
    (stub / "Chart.yaml").write_text(
        "apiVersion: v2\nname: jupyterhub\nversion: 4.4.0\n"
        "description: stand-in with the real values and schema, no templates\n"
    )
    shutil.copy(Z2JH / "values.yaml", stub / "values.yaml")
    (stub / "values.schema.json").write_text(json.dumps(z2jh_schema()))
    return chart


# ---- the hub's configuration -------------------------------------------------------------


def _fake_z2jh_module(values: dict, release: str) -> types.ModuleType:
    everything = dict(values, Release={"Name": release}, Chart={"Name": "jupyterhub"})

    def get_config(key, default=None):
        value = everything
        for level in key.split("."):
            if not isinstance(value, dict) or level not in value:
                return default
            value = value[level]
        return copy.deepcopy(value)

    module = types.ModuleType("z2jh")
    module.get_config = get_config
    return module


def _camel(name: str) -> str:
    return re.sub(r"_([a-z])", lambda m: m.group(1).upper(), name)


def z2jh_hub_config(values: dict, *, namespace: str = "aipower", release: str = "aipower"):
    """(Config, printed lines) of a hub pod with these *jupyterhub chart* values (see
    ``jupyterhub_values``); environment variables must be set by the caller."""
    module = _fake_z2jh_module(values, release)
    get_config = module.get_config
    c = Config()

    def set_if(section, trait, key):
        value = get_config(key)
        if value is not None:
            setattr(section, trait, value)

    c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
    db_type = get_config("hub.db.type")
    if db_type == "sqlite-pvc":
        c.JupyterHub.db_url = "sqlite:///jupyterhub.sqlite"
    else:
        set_if(c.JupyterHub, "db_url", "hub.db.url")
    for trait in (
        "concurrent_spawn_limit",
        "active_server_limit",
        "base_url",
        "allow_named_servers",
        "named_server_limit_per_user",
        "redirect_to_server",
        "template_paths",
        "template_vars",
    ):
        set_if(c.JupyterHub, trait, "hub." + _camel(trait))
    c.KubeSpawner.common_labels = {
        "app": "jupyterhub",
        "release": release,
        "app.kubernetes.io/name": "jupyterhub",
        "app.kubernetes.io/instance": release,
        "app.kubernetes.io/managed-by": "kubespawner",
    }
    c.KubeSpawner.namespace = namespace
    set_if(c.Spawner, "consecutive_failure_limit", "hub.consecutiveFailureLimit")
    for trait, key in (
        ("start_timeout", None),
        ("events_enabled", "events"),
        ("extra_labels", None),
        ("uid", None),
        ("fs_gid", None),
        ("node_selector", None),
        ("mem_limit", "memory.limit"),
        ("mem_guarantee", "memory.guarantee"),
        ("cpu_limit", "cpu.limit"),
        ("cpu_guarantee", "cpu.guarantee"),
        ("extra_resource_limits", "extraResource.limits"),
        ("extra_resource_guarantees", "extraResource.guarantees"),
        ("environment", "extraEnv"),
        ("profile_list", None),
    ):
        set_if(c.KubeSpawner, trait, "singleuser." + (key or _camel(trait)))
    image = get_config("singleuser.image.name")
    if image:
        c.KubeSpawner.image = f"{image}:{get_config('singleuser.image.tag')}"
    c.KubeSpawner.allow_privilege_escalation = get_config("singleuser.allowPrivilegeEscalation")
    if get_config("scheduling.userScheduler.enabled"):
        c.KubeSpawner.scheduler_name = "user-scheduler"
    if get_config("scheduling.userPods.nodeAffinity.matchNodePurpose") == "prefer":
        c.KubeSpawner.node_affinity_preferred = [
            {
                "weight": 100,
                "preference": {
                    "matchExpressions": [
                        {
                            "key": "hub.jupyter.org/node-purpose",
                            "operator": "In",
                            "values": ["user"],
                        }
                    ]
                },
            }
        ]
    tolerations = get_config("scheduling.userPods.tolerations", []) + get_config(
        "singleuser.extraTolerations", []
    )
    if tolerations:
        c.KubeSpawner.tolerations = tolerations
    if get_config("singleuser.storage.type") == "dynamic":
        volume = get_config("singleuser.storage.dynamic.volumeNameTemplate")
        set_if(c.KubeSpawner, "pvc_name_template", "singleuser.storage.dynamic.pvcNameTemplate")
        c.KubeSpawner.storage_pvc_ensure = True
        set_if(c.KubeSpawner, "storage_class", "singleuser.storage.dynamic.storageClass")
        set_if(
            c.KubeSpawner, "storage_access_modes", "singleuser.storage.dynamic.storageAccessModes"
        )
        set_if(c.KubeSpawner, "storage_capacity", "singleuser.storage.capacity")
        c.KubeSpawner.volumes = {
            volume: {"name": volume, "persistentVolumeClaim": {"claimName": "{pvc_name}"}}
        }
        c.KubeSpawner.volume_mounts = {
            volume: {
                "mountPath": get_config("singleuser.storage.homeMountPath"),
                "name": volume,
                "subPath": get_config("singleuser.storage.dynamic.subPath"),
            }
        }
    c.JupyterHub.services = []
    c.JupyterHub.load_roles = []
    if get_config("cull.enabled", False):
        c.JupyterHub.services.append(
            {
                "name": "jupyterhub-idle-culler",
                "command": ["python3", "-m", "jupyterhub_idle_culler"],
            }
        )
        c.JupyterHub.load_roles.append(
            {
                "name": "jupyterhub-idle-culler",
                "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
                "services": ["jupyterhub-idle-culler"],
            }
        )
    for key, service in get_config("hub.services", {}).items():
        c.JupyterHub.services.append(dict(service, name=key))
    for key, role in get_config("hub.loadRoles", {}).items():
        c.JupyterHub.load_roles.append(dict(role, name=key))
    if get_config("singleuser.cmd") is not None:
        c.Spawner.cmd = get_config("singleuser.cmd")
    set_if(c.Spawner, "default_url", "singleuser.defaultUrl")
    for section, settings in get_config("hub.config", {}).items():
        c[section].update(settings)

    printed: list[str] = []
    namespace_of_config = {"c": c, "get_config": get_config, "print": printed.append}
    saved = sys.modules.get("z2jh")
    sys.modules["z2jh"] = module
    try:
        for key, source in sorted(get_config("hub.extraConfig", {}).items()):
            exec(compile(source, f"hub.extraConfig.{key}", "exec"), dict(namespace_of_config))
    finally:
        if saved is None:
            sys.modules.pop("z2jh", None)
        else:
            sys.modules["z2jh"] = saved
    return c, printed
