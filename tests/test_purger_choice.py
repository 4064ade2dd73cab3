"""Which storage the end-of-window purge deletes: volumes on Kubernetes, home folders here."""

from __future__ import annotations

from quota_service import lifecycle
from quota_service.app import QuotaService
from spawner.kube import KubeHomePurger


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
