"""The banned-model scan on Kubernetes, as the chart sets it up: the quota service's settings,
the verbs its Role gains, the NetworkPolicy that leaves scan pods without network, and the scan
pod that the rendered settings make. Rendered offline as in tests/test_helm_chart.py (no
cluster: tests/test_model_scan_kube.py drives the pods against a recording fake API).
"""

from __future__ import annotations

import json
from datetime import timedelta

import helm_python
import pytest

from quota_service import model_scans
from quota_service.app import QuotaService
from spawner.kube import scan_pod
from tests.kube_offline import validate
from tests.test_helm_chart import EXAMPLE, chart, render  # noqa: F401 (chart: a fixture)

HUB_IMAGE = "ghcr.io/aipower-hub/hub:0.1.0"  # values.yaml's jupyterhub.hub.image


def quota_settings(objects) -> dict:
    return json.loads(objects[("ConfigMap", "aipower-quota")]["data"]["quota_config.json"])


def rules(objects) -> list[tuple[str, tuple[str, ...]]]:
    role = objects[("Role", "aipower-quota")]
    return [(r, tuple(rule["verbs"])) for rule in role["rules"] for r in rule["resources"]]


def loaded_service(objects, tmp_path, monkeypatch) -> QuotaService:
    """The quota service with the rendered configuration, in the pod's environment."""
    monkeypatch.setenv("POD_NAMESPACE", "aipower")
    for name in (
        "AIPOWER_VOLUMES_NAMESPACE",
        "AIPOWER_MODEL_SCAN_IMAGE",
        "AIPOWER_MODEL_SCAN_HOURS",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, text in objects[("ConfigMap", "aipower-quota")]["data"].items():
        (tmp_path / name).write_text(text)
    service = QuotaService()
    service.load_config_file(str(tmp_path / "quota_config.py"))
    return service


def test_on_by_default_with_exactly_the_verbs_it_needs(chart):  # noqa: F811
    objects = render(chart, {})
    settings = quota_settings(objects)
    assert {k: v for k, v in settings.items() if k.startswith("model_scan_")} == {
        "model_scan_hours": 24,
        "model_scan_image": HUB_IMAGE,
        "model_scan_deadline": 1800,
        "model_scan_resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"cpu": "1", "memory": "512Mi"},
        },
        "model_scan_uid": 1000,
        "model_scan_gid": 100,
    }
    assert rules(objects) == [
        ("persistentvolumeclaims", ("get", "list", "delete")),
        ("pods", ("create", "get", "list", "delete")),
        ("pods/log", ("get",)),
    ]
    binding = objects[("RoleBinding", "aipower-quota")]
    assert binding["roleRef"]["name"] == "aipower-quota"
    assert binding["subjects"][0]["name"] == "aipower-quota"
    deployment = objects[("Deployment", "aipower-quota")]["spec"]["template"]["spec"]
    assert deployment["automountServiceAccountToken"] is True


def test_scan_pods_get_no_network_at_all(chart):  # noqa: F811
    policy = render(chart, EXAMPLE)[("NetworkPolicy", "aipower-model-scan")]
    validate(policy)
    spec = policy["spec"]
    # both directions named, no rule given: nothing in, nothing out (DNS neither)
    assert spec == {
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/name": "aipower-hub",
                "app.kubernetes.io/component": "model-scan",
            }
        },
        "policyTypes": ["Ingress", "Egress"],
    }


def test_the_rendered_settings_make_a_valid_scan_pod_selected_by_the_policy(
    chart,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    values = {
        "quota": {
            "modelScan": {
                "everyHours": 12,
                "image": {"name": "registry.example.tw/aipower/hub", "tag": "2026.11"},
                "deadlineSeconds": 900,
            }
        }
    }
    objects = render(chart, values)
    service = loaded_service(objects, tmp_path, monkeypatch)
    assert service.model_scan_hours == 12
    scanner = service.model_scanner()
    assert isinstance(scanner, model_scans.PodScans) and scanner.deadline == timedelta(seconds=900)
    assert scanner.pods.namespace == "aipower"
    pod = scan_pod("trainee", ["aipower-home-trainee"], scanner.pods.settings)
    validate(pod)
    assert pod["spec"]["containers"][0]["image"] == "registry.example.tw/aipower/hub:2026.11"
    assert pod["spec"]["activeDeadlineSeconds"] == 900
    assert pod["spec"]["securityContext"]["runAsUser"] == 1000
    selector = objects[("NetworkPolicy", "aipower-model-scan")]["spec"]["podSelector"]
    assert selector["matchLabels"].items() <= pod["metadata"]["labels"].items()


def test_off_the_role_keeps_only_the_purge_and_no_scan_runs(chart, tmp_path, monkeypatch):  # noqa: F811
    objects = render(chart, {"quota": {"modelScan": {"enabled": False}}})
    assert rules(objects) == [("persistentvolumeclaims", ("get", "list", "delete"))]
    assert ("NetworkPolicy", "aipower-model-scan") not in objects
    assert quota_settings(objects)["model_scan_hours"] == 0
    assert loaded_service(objects, tmp_path, monkeypatch).model_scanner() is None


def test_scan_without_purge_lists_claims_but_cannot_delete_them(chart):  # noqa: F811
    objects = render(chart, {"quota": {"storagePurge": False}})
    assert rules(objects)[0] == ("persistentvolumeclaims", ("list",))
    policy = objects[("NetworkPolicy", "aipower-quota")]["spec"]
    assert any({"port": 6443} in rule.get("ports", []) for rule in policy["egress"])


def test_neither_purge_nor_scan_gives_no_role_and_no_token(chart):  # noqa: F811
    objects = render(chart, {"quota": {"storagePurge": False, "modelScan": {"enabled": False}}})
    assert ("Role", "aipower-quota") not in objects
    deployment = objects[("Deployment", "aipower-quota")]["spec"]["template"]["spec"]
    assert deployment["automountServiceAccountToken"] is False


@pytest.mark.parametrize(
    "bad, where",
    [
        ({"everyHours": 0}, "everyHours"),
        ({"deadlineSeconds": 30}, "deadlineSeconds"),
        ({"resources": {"limits": None}}, "limits"),  # null removes the default
        ({"imag": {}}, "imag"),
    ],
)
def test_bad_scan_values_are_refused_by_the_schema(chart, bad, where):  # noqa: F811
    with pytest.raises(helm_python.HelmValuesError, match=where):
        render(chart, {"quota": {"modelScan": bad}})
