"""The Helm chart, offline: render and lint with helm-python-sdk (Helm 4's engine, no
binary, no cluster), our objects against the Kubernetes schema (``kubernetes-validate
--strict``), the values for the jupyterhub dependency against z2jh 4.4's schema, and the
hub configuration that the values make.

Not run here: the jupyterhub chart's own templates (its package cannot be downloaded; a
stand-in with its real values and schema takes its place, see ``tests/z2jh_offline.py``),
Helm's ``lookup`` of the existing Secret on upgrades (offline it finds nothing), and
anything that needs an API server.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from types import SimpleNamespace

import helm_python
import jsonschema
import pytest
import yaml

from hub_config.roles import CUSTOM_SCOPES, load_roles
from spawner.kube import KubeGPUSpawner
from tests.kube_offline import FakeQuota, patch_kubespawner, validate
from tests.z2jh_offline import (
    CHART,
    EXAMPLES,
    REPO,
    Z2JH,
    chart_values,
    chart_with_stub_dependency,
    jupyterhub_values,
    load_yaml,
    z2jh_hub_config,
    z2jh_schema,
)

EXAMPLE = load_yaml(EXAMPLES / "nvidia-amd.yaml")
CASES = {"defaults": {}, "nvidia-amd": EXAMPLE}
OUR_OBJECTS = {
    ("Secret", "aipower-secrets"),
    ("ConfigMap", "aipower-quota"),
    ("Deployment", "aipower-quota"),
    ("Service", "aipower-quota"),
    ("PersistentVolumeClaim", "aipower-quota-files"),
    ("ServiceAccount", "aipower-quota"),
    ("Role", "aipower-quota"),
    ("RoleBinding", "aipower-quota"),
    ("NetworkPolicy", "aipower-quota"),
    ("NetworkPolicy", "aipower-singleuser-to-quota"),
    ("NetworkPolicy", "aipower-model-scan"),
}


@pytest.fixture(scope="module")
def chart(tmp_path_factory) -> Path:
    return chart_with_stub_dependency(tmp_path_factory.mktemp("chart"))


def render(chart: Path, values: dict) -> dict[tuple[str, str], dict]:
    with helm_python.Chart.load(chart) as loaded:
        manifests = loaded.render(values, name="aipower", namespace="aipower")
    objects = {}
    for path, text in manifests.items():
        if path.endswith("NOTES.txt"):
            continue
        for document in yaml.safe_load_all(text):
            if document:
                objects[(document["kind"], document["metadata"]["name"])] = document
    return objects


def test_the_dependency_is_z2jh_4_4_from_its_repository():
    (dependency,) = helm_python.dependency_list(CHART)
    assert (dependency["name"], dependency["version"]) == ("jupyterhub", "4.4.0")
    assert dependency["repository"] == "https://hub.jupyter.org/helm-chart/"
    assert Z2JH.is_dir(), "../shared/data/z2jh-4.4.0 (the chart's values and schema) is missing"


@pytest.mark.parametrize("case", CASES)
def test_renders_lints_and_every_object_passes_the_kubernetes_schema(chart, case):
    objects = render(chart, CASES[case])
    assert set(objects) == OUR_OBJECTS
    for obj in objects.values():
        validate(obj)
    report = helm_python.lint(chart, CASES[case], strict=True, kube_version="v1.35.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_the_dependency_missing_is_the_only_lint_finding_without_the_stand_in():
    if (CHART / "charts").exists():
        pytest.skip("the jupyterhub dependency was fetched into helm/aipower-hub/charts")
    report = helm_python.lint(CHART, strict=True)
    assert report["errors"] == ["chart directory is missing these dependencies: jupyterhub"]


@pytest.mark.parametrize("case", CASES)
def test_the_values_for_jupyterhub_validate_against_its_schema(case):
    values = jupyterhub_values(chart_values(CASES[case]))
    jsonschema.validate(values, z2jh_schema())
    wrong = jupyterhub_values(chart_values(CASES[case], {"jupyterhub": {"hub": {"extraEnvv": {}}}}))
    with pytest.raises(jsonschema.ValidationError, match="extraEnvv"):
        jsonschema.validate(wrong, z2jh_schema())


@pytest.mark.parametrize(
    "bad, where",
    [
        ({"quota": {"meteringInterval": 0}}, "meteringInterval"),
        ({"quota": {"replicas": 2}}, "replicas"),
        (
            {"jupyterhub": {"custom": {"aipower": {"gpus": {"amd": {"resource": "amd gpu"}}}}}},
            "resource",
        ),
        ({"jupyterhub": {"custom": {"aipower": {"oidc": {"tokenUrl": "sso/token"}}}}}, "tokenUrl"),
        ({"jupyterhub": {"hub": {"db": {"type": "postgresql"}}}}, "type"),  # z2jh's schema
    ],
)
def test_bad_values_are_refused_by_a_schema(chart, bad, where):
    with pytest.raises(helm_python.HelmValuesError, match=where):
        render(chart, bad)


def _walk(schema: dict, path: str):
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}" if path else name)


def test_every_value_of_ours_is_documented_in_the_schema():
    schema = json.loads((CHART / "values.schema.json").read_text())
    ours = [
        (path, node)
        for path, node in _walk(schema, "")
        if path.split(".")[0] in {"quota", "networkPolicy", "secrets"}
        or path.startswith("jupyterhub.custom.aipower")
    ]
    assert len(ours) > 40
    assert [path for path, node in ours if not node.get("description")] == []

    def leaves(values, path=""):
        for key, value in values.items():
            here = f"{path}.{key}" if path else key
            if isinstance(value, dict) and value:
                yield from leaves(value, here)
            else:
                yield here

    def described(path: str) -> bool:
        # documented itself, or inside a documented free-form object (resources, nodeSelector)
        parts = path.split(".")
        for end in range(len(parts), 0, -1):
            node = documented.get(".".join(parts[:end]))
            if node is not None:
                return end == len(parts) or "properties" not in node
        return False

    documented = dict(ours)
    mine = [
        path
        for path in leaves(chart_values())
        if path.split(".")[0] != "jupyterhub" or path.startswith("jupyterhub.custom")
    ]
    assert len(mine) > 30
    assert [path for path in mine if not described(path)] == []
    # and listed in the deployment guide's table
    guide = (REPO / "docs" / "deploy-kubernetes.md").read_text()
    leaves_of_schema = [path for path, node in ours if "properties" not in node]
    assert [path for path in leaves_of_schema if f"| `{path}` |" not in guide] == []


def test_tokens_given_are_used_and_otherwise_generated(chart):
    given = render(chart, {"secrets": {"hubAgentToken": "agent-1", "quotaApiToken": "quota-1"}})
    secret = given[("Secret", "aipower-secrets")]
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {"hub-agent-token": "agent-1", "quota-api-token": "quota-1"}
    # kept across upgrades through Helm's lookup (not run offline) and never deleted by Helm
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    first, second = (render(chart, {})[("Secret", "aipower-secrets")]["data"] for _ in range(2))
    for data in (first, second):
        for value in data.values():
            token = base64.b64decode(value).decode()
            assert len(token) == 64 and token.isalnum()
    assert first != second  # offline there is no existing Secret to keep


def test_the_names_the_hub_and_the_quota_service_use_exist(chart):
    values = chart_values(EXAMPLE)
    objects = render(chart, EXAMPLE)
    secret_keys = set(objects[("Secret", "aipower-secrets")]["data"])
    refs = {
        name: env["valueFrom"]["secretKeyRef"]
        for name, env in values["jupyterhub"]["hub"]["extraEnv"].items()
    }
    assert {r["key"] for r in refs.values() if r["name"] == "aipower-secrets"} == secret_keys
    assert {r["name"] for r in refs.values()} == {
        "aipower-secrets",
        "aipower-database",
        "aipower-oidc",
    }
    deployment = objects[("Deployment", "aipower-quota")]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["JUPYTERHUB_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "aipower-secrets",
        "key": "quota-api-token",
    }
    assert env["AIPOWER_QUOTA_DB_URL"]["valueFrom"]["secretKeyRef"]["name"] == "aipower-database"
    assert env["AIPOWER_SMTP_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "aipower-smtp"
    assert container["image"] == "registry.aipower.example.tw/aipower/hub:2026.11"
    service = objects[("Service", "aipower-quota")]
    (port,) = service["spec"]["ports"]
    assert (
        values["jupyterhub"]["custom"]["aipower"]["quotaUrl"]
        == f"http://aipower-quota:{port['port']}"
    )
    assert (
        service["spec"]["selector"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    # z2jh's hub NetworkPolicy admits only pods with this label to the hub's API
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["hub.jupyter.org/network-access-hub"] == "true"


def test_the_quota_network_policy_follows_the_values(chart):
    policy = render(chart, EXAMPLE)[("NetworkPolicy", "aipower-quota")]["spec"]
    (ingress,) = policy["ingress"]
    assert [p["podSelector"]["matchLabels"]["component"] for p in ingress["from"]] == [
        "hub",
        "proxy",
        "singleuser-server",
    ]
    egress = {
        json.dumps(rule.get("to", []), sort_keys=True): rule["ports"] for rule in policy["egress"]
    }
    assert egress['[{"ipBlock": {"cidr": "10.20.0.5/32"}}]'] == [{"port": 5432}]
    assert egress['[{"ipBlock": {"cidr": "10.10.0.0/24"}}]'] == [{"port": 6443}]
    assert egress['[{"ipBlock": {"cidr": "10.20.0.25/32"}}]'] == [{"port": 587}]
    servers = render(chart, EXAMPLE)[("NetworkPolicy", "aipower-singleuser-to-quota")]["spec"]
    assert servers["podSelector"]["matchLabels"] == {
        "component": "singleuser-server",
        "release": "aipower",
    }
    assert servers["egress"][0]["ports"] == [{"port": 10101}]
    without = render(
        chart,
        {
            "networkPolicy": {"enabled": False},
            "quota": {"storagePurge": False, "modelScan": {"enabled": False}},
        },
    )
    assert ("NetworkPolicy", "aipower-quota") not in without
    assert ("NetworkPolicy", "aipower-singleuser-to-quota") not in without
    assert ("Role", "aipower-quota") not in without


def test_the_quota_service_loads_its_configuration_file(chart, tmp_path):
    from quota_service.app import QuotaService

    config = {
        "quota": {
            "meteringInterval": 30,
            "config": {"purge_grace_days": 3, "window_reminder_days": [7, 1]},
        }
    }
    configmap = render(chart, config)[("ConfigMap", "aipower-quota")]
    for name, text in configmap["data"].items():
        (tmp_path / name).write_text(text)
    service = QuotaService()
    service.load_config_file(str(tmp_path / "quota_config.py"))
    assert (service.metering_interval, service.purge_grace_days) == (30, 3)
    assert service.window_reminder_days == [7, 1]


# ---- the hub's configuration: z2jh's, then our hub.extraConfig ---------------------------

HUB_ENV = {
    "AIPOWER_HUB_DB_URL": "postgresql://hub:secret@10.20.0.5:5432/hub",
    "AIPOWER_HUB_AGENT_TOKEN": "agent-token",
    "AIPOWER_QUOTA_API_TOKEN": "quota-token",
}


@pytest.fixture
def hub_env(monkeypatch):
    for name, value in HUB_ENV.items():
        monkeypatch.setenv(name, value)


def embedded_default_config(tmp_path, monkeypatch):
    """hub_config/jupyterhub_config.py, the embedded default, run as JupyterHub would."""
    from traitlets.config import Config

    monkeypatch.setenv("AIPOWER_STATE_DIR", str(tmp_path))
    c = Config()
    path = REPO / "hub_config" / "jupyterhub_config.py"
    exec(
        compile(path.read_text(), str(path), "exec"),
        {"get_config": lambda: c, "__file__": str(path)},
    )
    return c


def test_the_hub_loads_our_authenticator_spawner_roles_and_services(
    chart, hub_env, tmp_path, monkeypatch
):
    c, printed = z2jh_hub_config(jupyterhub_values(chart_values(EXAMPLE)))
    assert c.JupyterHub.authenticator_class == "authenticator.AIPowerAuthenticator"
    assert c.JupyterHub.spawner_class == "spawner.kube.KubeGPUSpawner"
    assert c.JupyterHub.db_url == "postgresql+psycopg://hub:secret@10.20.0.5:5432/hub"
    assert c.JupyterHub.admin_access is False
    assert c.AIPowerAuthenticator.authorize_url.startswith("https://sso.aipower.example.tw/realms/")
    assert c.AIPowerAuthenticator.login_service == "工商憑證 / Business certificate"
    assert c.QuotaServiceClient.url == "http://aipower-quota:10101/services/quota"
    services = {s["name"]: s for s in c.JupyterHub.services}
    assert set(services) == {"jupyterhub-idle-culler", "quota", "aipower-hub-agent"}
    assert services["quota"]["api_token"] == "quota-token"
    assert services["aipower-hub-agent"]["api_token"] == "agent-token"
    assert c.KubeGPUSpawner.images == {
        "nvidia": "registry.aipower.example.tw/aipower/cuda-notebook:2026.11",
        "amd": "registry.aipower.example.tw/aipower/rocm-notebook:2026.11",
    }
    assert c.KubeGPUSpawner.gpu_profiles["amd"]["supplemental_gids"] == [44, 109]
    assert c.KubeGPUSpawner.notebook_quota_url == c.QuotaServiceClient.url

    # the network rules of use: the hub's, the servers' (an extension the spawner turns
    # on, with the same variables) and the quota service's are one policy
    from authenticator import server_guard
    from quota_service.network import NetworkPolicy
    from spawner.notebook import server_token_scopes

    policy = NetworkPolicy(config=c)
    assert (policy.proxy_networks, policy.trusted_proxies) == (["10.42.0.0/16"], ["10.42.0.0/16"])
    assert policy.enforce_trusted_networks is True
    assert c.KubeSpawner.args.get_value([]) == server_guard.server_args()
    server_env = c.KubeSpawner.environment
    assert {k: v for k, v in server_env.items() if not callable(v)} == policy.environment()
    assert callable(server_env[server_guard.APPLY]) and callable(server_env[server_guard.TRUSTED])
    assert c.Spawner.server_token_scopes == server_token_scopes("quota")
    (container,) = render(chart, EXAMPLE)[("Deployment", "aipower-quota")]["spec"]["template"][
        "spec"
    ]["containers"]
    quota_env = {e["name"]: e.get("value") for e in container["env"]}
    assert {k: quota_env[k] for k in policy.environment()} == policy.environment()

    # the same roles and scopes as the embedded default, where the services exist here
    default = embedded_default_config(tmp_path, monkeypatch)
    assert c.JupyterHub.custom_scopes == default.JupyterHub.custom_scopes == CUSTOM_SCOPES
    ours = [r for r in c.JupyterHub.load_roles if r["name"] != "jupyterhub-idle-culler"]
    here = [r for r in load_roles() if set(r.get("services", [])) <= set(services)]
    assert ours == here
    assert {"user", "gpu-user", "operator", "reviewer", "quota-service", "hub-agent"} <= {
        r["name"] for r in ours
    }
    left_out = [r["name"] for r in load_roles() if r not in here]
    assert len(printed) == len(left_out)
    default_services = {s["name"]: s for s in default.JupyterHub.services}
    for key in ("oauth_client_allowed_scopes", "oauth_no_confirm"):
        assert services["quota"][key] == default_services["quota"][key]


async def test_pods_from_the_example_values_nvidia_2_amd_1_nvidia_1(hub_env, monkeypatch):
    """The sequence again, with the configuration the chart's example gives the hub."""
    api = patch_kubespawner(monkeypatch)
    config, _ = z2jh_hub_config(jupyterhub_values(chart_values(EXAMPLE)))
    config.KubeSpawner.events_enabled = False
    quota = FakeQuota()
    monkeypatch.setattr(KubeGPUSpawner, "quota", property(lambda self: quota))
    user = SimpleNamespace(name="trainee", id=1, url="/user/trainee/", settings={})
    spawner = KubeGPUSpawner(_mock=True, user=user, config=config)
    for vendor, count in (("nvidia", 2), ("amd", 1), ("nvidia", 1)):
        spawner.user_options = {"gpu_vendor": vendor, "gpu_count": count}
        await spawner.start()
        pod = api.created_pods[-1]
        validate(pod)
        spec = pod["spec"]
        (notebook,) = spec["containers"]
        resource = f"{vendor}.com/gpu"
        limits = notebook["resources"]["limits"]
        assert {k: v for k, v in limits.items() if k.endswith("/gpu")} == {resource: str(count)}
        assert spec["nodeSelector"] == {"aipower.tw/gpu-vendor": vendor}
        assert [t["key"] for t in spec["tolerations"]] == [
            "hub.jupyter.org/dedicated",
            "hub.jupyter.org_dedicated",
            resource,
        ]
        assert spec["securityContext"].get("supplementalGroups") == (
            [44, 109] if vendor == "amd" else None
        )
        assert notebook["image"].endswith(
            ("cuda" if vendor == "nvidia" else "rocm") + "-notebook:2026.11"
        )
        # singleuser.cpu.guarantee 4 and memory.limit 128G (traitlets: 128 GiB)
        assert (notebook["resources"]["requests"]["cpu"], limits["memory"]) == (4, 128 * 2**30)
        assert spec["volumes"][0]["persistentVolumeClaim"]["claimName"] == "aipower-home-trainee"
        env = {e["name"]: e.get("value") for e in notebook["env"]}
        assert env["AIPOWER_PROXY_NETWORKS"] == "10.42.0.0/16"
        assert env["AIPOWER_TRUSTED_NETWORKS_APPLY"] in ("0", "1")
        assert env["AIPOWER_QUOTA_URL"] == "http://aipower-quota:10101/services/quota"
        assert "--ServerApp.jpserver_extensions=authenticator.server_guard=True" in notebook["args"]
        assert quota.opened[-1]["gpu_count"] == count
        await spawner.stop()
    (claim,) = api.created_claims
    validate(claim)
    assert claim["spec"]["storageClassName"] == "cephfs"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert os.environ["AIPOWER_HUB_DB_URL"]  # the hub's environment was in place


def test_every_hub_setting_names_a_real_option_of_this_jupyterhub(hub_env):
    """Run on JupyterHub 6 (.venv) and 5.5 (.venv-jh5): nothing the chart's hub
    configuration sets is unknown to the classes that read it."""
    from jupyterhub.app import JupyterHub
    from jupyterhub.spawner import Spawner
    from kubespawner import KubeSpawner

    from authenticator import AIPowerAuthenticator
    from quota_service.client import QuotaServiceClient
    from quota_service.network import NetworkPolicy

    c, _ = z2jh_hub_config(jupyterhub_values(chart_values(EXAMPLE)))
    classes = {
        cls.__name__: cls
        for cls in (
            JupyterHub,
            Spawner,
            KubeSpawner,
            KubeGPUSpawner,
            AIPowerAuthenticator,
            QuotaServiceClient,
            NetworkPolicy,
        )
    }
    assert set(c) <= set(classes)
    for section, settings in c.items():
        unknown = set(settings) - set(classes[section].class_trait_names(config=True))
        assert unknown == set(), f"{section}: {unknown}"
