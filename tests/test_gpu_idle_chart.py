"""GPU-utilisation culling on Kubernetes: the chart turns quota.gpuIdle into the quota
service's Prometheus source, and lets the service reach Prometheus. Rendered offline as in
tests/test_helm_chart.py (no cluster, no Prometheus: tests/test_gpu_idle.py asks a real one).
"""

from __future__ import annotations

import json
from datetime import timedelta

import helm_python
import pytest

from quota_service.app import QuotaService
from quota_service.gpu_idle import PrometheusSource
from quota_service.hub_api import HubAPI
from tests.test_helm_chart import EXAMPLE, chart, render  # noqa: F401 (chart: a fixture)

URL = "http://prometheus-operated.monitoring:9090/api/v1/query"


def quota_settings(objects) -> dict:
    return json.loads(objects[("ConfigMap", "aipower-quota")]["data"]["quota_config.json"])


def prometheus_egress(objects) -> list[dict]:
    policy = objects[("NetworkPolicy", "aipower-quota")]["spec"]
    return [rule for rule in policy["egress"] if {"port": 9090} in rule.get("ports", [])]


def test_off_by_default_and_no_way_to_prometheus(chart):  # noqa: F811
    objects = render(chart, {})
    assert quota_settings(objects)["gpu_idle_source"] == ""
    assert prometheus_egress(objects) == []


def test_the_example_culls_from_prometheus(chart, tmp_path, monkeypatch):  # noqa: F811
    objects = render(chart, EXAMPLE)
    settings = quota_settings(objects)
    assert {k: v for k, v in settings.items() if k.startswith("gpu_idle_")} == {
        "gpu_idle_source": "prometheus",
        "gpu_idle_prometheus_url": URL,
        "gpu_idle_threshold_percent": 5,
        "gpu_idle_warn_after": 1800,
        "gpu_idle_stop_after": 3600,
        "gpu_idle_interval": 60,
        "gpu_idle_prometheus_metrics": {
            "nvidia": "DCGM_FI_DEV_GPU_UTIL",
            "amd": "gpu_gfx_activity",
        },
        "gpu_idle_pod_label": "pod",
        "gpu_idle_namespace_label": "namespace",
    }
    [rule] = prometheus_egress(objects)
    assert rule["to"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }
    # the quota service loads it as the Deployment runs it (POD_NAMESPACE from the pod)
    for name, text in objects[("ConfigMap", "aipower-quota")]["data"].items():
        (tmp_path / name).write_text(text)
    monkeypatch.setenv("POD_NAMESPACE", "aipower")
    service = QuotaService()
    service.load_config_file(str(tmp_path / "quota_config.py"))
    service.session_factory, service.hub_api = None, HubAPI("http://hub:8081/hub/api", "")
    culler = service.gpu_idle_culler()
    assert isinstance(culler.source, PrometheusSource)
    assert culler.source.query("amd") == 'max_over_time(gpu_gfx_activity{namespace="aipower"}[60s])'
    assert (culler.rule.warn_after, culler.rule.stop_after) == (
        timedelta(minutes=30),
        timedelta(minutes=60),
    )


def test_the_hubs_pod_name_template_and_exported_labels_reach_the_service(chart):  # noqa: F811
    values = {
        "quota": {"gpuIdle": {"enabled": True, "prometheusUrl": URL, "podLabel": "exported_pod"}},
        "jupyterhub": {"singleuser": {"podNameTemplate": "gpu-{user_server}"}},
    }
    settings = quota_settings(render(chart, values))
    assert settings["gpu_idle_pod_name_template"] == "gpu-{user_server}"
    assert settings["gpu_idle_pod_label"] == "exported_pod"


@pytest.mark.parametrize(
    "gpu_idle, where",
    [
        ({"enabled": True}, "prometheusUrl"),
        ({"prometheusUrl": "prometheus:9090"}, "prometheusUrl"),
        ({"thresholdPercent": 0}, "thresholdPercent"),
        ({"metrics": {"nvidia": "DCGM FI"}}, "nvidia"),
    ],
)
def test_bad_gpu_idle_values_are_refused(chart, gpu_idle, where):  # noqa: F811
    with pytest.raises(helm_python.HelmValuesError, match=where):
        render(chart, {"quota": {"gpuIdle": gpu_idle}})
