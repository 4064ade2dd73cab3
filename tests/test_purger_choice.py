"""Which storage the end-of-window purge deletes, and the banned-model scan reads: volumes on
Kubernetes, home folders here."""

from __future__ import annotations

from datetime import timedelta

import pytest

from quota_service import lifecycle, model_scans
from quota_service.app import QuotaService
from spawner.kube import KubeHomePurger, KubeScanPods


def service(**settings) -> QuotaService:
    return QuotaService(**settings)


def test_the_chart_namespace_selects_the_volume_purger(monkeypatch):
    monkeypatch.delenv("AIPOWER_VOLUMES_NAMESPACE", raising=False)
    monkeypatch.setenv("POD_NAMESPACE", "aipower")
    purger = service(homes_dir="/srv/homes").storage_purger()
    assert isinstance(purger, KubeHomePurger) and purger.namespace == "aipower"


def test_the_embedded_default_purges_home_folders(monkeypatch, tmp_path):
    monkeypatch.delenv("AIPOWER_VOLUMES_NAMESPACE", raising=False)
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    purger = service(homes_dir=str(tmp_path)).storage_purger()
    assert isinstance(purger, lifecycle.LocalHomesPurger) and purger.root == tmp_path


def test_without_storage_settings_nothing_is_purged(monkeypatch):
    for name in ("AIPOWER_VOLUMES_NAMESPACE", "POD_NAMESPACE", "AIPOWER_HOMES_DIR"):
        monkeypatch.delenv(name, raising=False)
    assert service().storage_purger() is None


# ---- the banned-model scan follows the same choice -----------------------------------------


def test_on_kubernetes_the_scan_runs_in_pods_of_the_configured_image(monkeypatch):
    monkeypatch.setenv("POD_NAMESPACE", "aipower")
    monkeypatch.delenv("AIPOWER_VOLUMES_NAMESPACE", raising=False)
    monkeypatch.setenv("AIPOWER_MODEL_SCAN_IMAGE", "ghcr.io/aipower-hub/hub:0.1.0")
    scanner = service(homes_dir="/srv/homes", model_scan_deadline=900).model_scanner()
    assert isinstance(scanner, model_scans.PodScans)
    assert isinstance(scanner.pods, KubeScanPods) and scanner.pods.namespace == "aipower"
    assert scanner.deadline == timedelta(seconds=900)
    assert scanner.pods.settings.image == "ghcr.io/aipower-hub/hub:0.1.0"


def test_on_kubernetes_without_an_image_nothing_is_scanned(monkeypatch):
    monkeypatch.setenv("POD_NAMESPACE", "aipower")
    monkeypatch.delenv("AIPOWER_MODEL_SCAN_IMAGE", raising=False)
    assert service().model_scanner() is None


def test_the_embedded_default_scans_home_folders_and_0_hours_turns_it_off(monkeypatch, tmp_path):
    for name in ("AIPOWER_VOLUMES_NAMESPACE", "POD_NAMESPACE", "AIPOWER_MODEL_SCAN_HOURS"):
        monkeypatch.delenv(name, raising=False)
    scanner = service(homes_dir=str(tmp_path)).model_scanner()
    assert isinstance(scanner, model_scans.LocalHomes) and scanner.root == tmp_path
    assert service(homes_dir=str(tmp_path), model_scan_hours=0).model_scanner() is None


@pytest.mark.parametrize(
    "setting", [{"model_scan_uid": 0}, {"model_scan_deadline": 59}, {"model_scan_resources": {}}]
)
def test_scan_pod_settings_that_would_be_unsafe_are_refused(setting):
    with pytest.raises(ValueError):
        service(**setting)
