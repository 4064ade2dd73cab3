"""Scheduled scans of the people's storage for banned models: who is scanned, when, and what
the operator gets, on real folders copied from the sample models."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

from hub_config.seed import seed_demo
from quota_service import banned_models, model_scans
from quota_service import db as database
from quota_service.models import AuditEvent, Project, ProjectStatus
from tests.conftest import at

SAMPLES = Path(__file__).parent / "data" / "models"
DAY = timedelta(days=1)


def seeded(session_factory) -> None:
    with database.transaction(session_factory) as db:
        seed_demo(db, now=at("2026-11-01 09:00"))


def scan(session_factory, homes: Path, now, every=DAY) -> list[str]:
    scanner = model_scans.LocalHomes(homes, banned_models.load_rules())
    return scanner.scan_due(session_factory, now=now, every=every)


def test_members_of_running_projects_are_scanned_once_a_period(session_factory, tmp_path):
    seeded(session_factory)
    homes = tmp_path / "homes"
    shutil.copytree(SAMPLES / "qwen2-7b", homes / "trainee" / "models" / "qwen2-7b")
    shutil.copytree(SAMPLES / "gemma-2-9b", homes / "trainee" / "models" / "gemma-2-9b")
    shutil.copytree(SAMPLES / "deepseek-v3", homes / "applicant" / "deepseek-v3")

    # the applicant's project is pending: no servers, not scanned; the trainee's is approved
    assert scan(session_factory, homes, at("2026-11-28 03:00")) == ["trainee"]
    # a re-run in the same day scans nobody; a day later (to the second) it is due again
    assert scan(session_factory, homes, at("2026-11-29 02:59:59")) == []
    assert scan(session_factory, homes, at("2026-11-29 03:00")) == ["trainee"]

    with database.transaction(session_factory) as db:
        (latest,) = model_scans.latest_scans(db)
        count = db.query(AuditEvent).filter_by(action=model_scans.SCANNED).count()
    assert count == 2
    assert latest.username == "trainee" and latest.at == at("2026-11-29 03:00")
    assert latest.flagged
    assert latest.detail["model_folders"] == 2
    assert latest.detail["flagged_folders"] == ["models/qwen2-7b"]
    assert latest.detail["companies"] == ["示範智能股份有限公司"]
    evidence = {(f["field"], f["value"], f["path"]) for f in latest.detail["findings"]}
    assert ("architectures", "Qwen2ForCausalLM", "models/qwen2-7b/config.json") in evidence


def test_a_suspended_project_is_still_scanned_and_a_closed_one_is_not(session_factory, tmp_path):
    seeded(session_factory)
    homes = tmp_path / "homes"
    shutil.copytree(SAMPLES / "llama-3.1-8b", homes / "trainee" / "llama-3.1-8b")
    with database.transaction(session_factory) as db:
        db.query(Project).filter_by(status=ProjectStatus.APPROVED).update(
            {"status": ProjectStatus.SUSPENDED}
        )
    assert scan(session_factory, homes, at("2026-11-28 03:00")) == ["trainee"]
    with database.transaction(session_factory) as db:
        (latest,) = model_scans.latest_scans(db)
        db.query(Project).filter_by(status=ProjectStatus.SUSPENDED).update(
            {"status": ProjectStatus.CLOSED}
        )
    assert not latest.flagged and latest.detail["model_folders"] == 1
    assert scan(session_factory, homes, at("2026-12-28 03:00")) == []


def test_a_member_without_a_home_yet_is_recorded_clean(session_factory, tmp_path):
    seeded(session_factory)
    assert scan(session_factory, tmp_path / "homes", at("2026-11-28 03:00")) == ["trainee"]
    with database.transaction(session_factory) as db:
        (latest,) = model_scans.latest_scans(db)
    assert latest.detail["home_found"] is False and not latest.flagged
