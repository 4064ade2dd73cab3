"""End to end: a server whose GPUs stay idle is warned by e-mail, then stopped, and its
points stop with it; on the real hub, proxy, OIDC provider, quota service, mail catcher and
single-user server.

No GPU on these machines: the server's GPU is simulated, and the quota service's local
source runs ``cat`` of a recorded ``nvidia-smi`` sample in which every GPU is under 5 %
(tests/data/nvidia-smi_utilization_idle_8xH100.csv) in place of ``nvidia-smi`` itself. The
rule runs in seconds instead of minutes: a warning after 4 s of idle GPUs, a stop after 8 s.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from quota_service.gpu_idle import GPU_IDLE
from quota_service.models import AuditEvent
from tests import test_e2e
from tests.platform import QuotaDB, wait_for
from tests.stack import Stack
from tests.test_e2e import start, wait_gone, wait_ready

pytestmark = pytest.mark.e2e
quota_db = test_e2e.quota_db  # the fixture, on this module's stack
INTERVAL = 2
WARN_AFTER, STOP_AFTER = 4, 8
IDLE_SAMPLE = Path(__file__).parent / "data" / "nvidia-smi_utilization_idle_8xH100.csv"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request, tmp_path_factory):
    state = tmp_path_factory.mktemp(f"gpu-idle-{request.param}")
    url = f"sqlite:///{state / 'quota.sqlite'}"
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_server").create_database(
            f"gpu_idle_{int(time.time())}"
        )
    platform = Stack(
        state,
        quota_db_url=url,
        metering_interval=INTERVAL,
        notice_interval=INTERVAL,
        extra_env={
            "AIPOWER_POLL_INTERVAL": "2",
            "AIPOWER_AUTH_REFRESH_AGE": "2",
            "AIPOWER_GPU_IDLE_SOURCE": "local",
            "AIPOWER_GPU_IDLE_INTERVAL": "1",
            "AIPOWER_GPU_IDLE_WARN_AFTER": str(WARN_AFTER),
            "AIPOWER_GPU_IDLE_STOP_AFTER": str(STOP_AFTER),
            "AIPOWER_GPU_IDLE_COMMANDS": json.dumps({"nvidia": ["cat", str(IDLE_SAMPLE)]}),
        },
    )
    platform.start()
    yield platform
    platform.stop()


def audit_rows(database: QuotaDB, session_id: int) -> list[AuditEvent]:
    with database.factory() as db:
        return list(
            db.scalars(
                select(AuditEvent)
                .where(
                    AuditEvent.subject_type == "usage_session",
                    AuditEvent.subject_id == str(session_id),
                )
                .order_by(AuditEvent.id)
            )
        )


def test_an_idle_server_is_warned_then_stopped_and_its_points_stop(stack, quota_db):
    project_id = quota_db.add_project("idler", business_number="12345675", millipoints=1_000_000)
    browser = stack.sign_in("idler")
    api = stack.api(stack.token_for(browser, "idler"))
    response = start(api, stack, "idler", {"gpu_vendor": "nvidia", "gpu_count": 1})
    assert response.status_code in (201, 202), response.text
    wait_ready(api, stack, "idler")

    [warning] = wait_for(
        lambda: [m for m in stack.mails() if m["To"] == "idler@example.tw"],
        WARN_AFTER + 3 * INTERVAL + 30,
        "the GPU-idle warning by e-mail",
    )
    assert "GPU 閒置" in warning["Subject"] and "idle GPUs" in warning["Subject"]
    body = warning.get_content()
    assert body.index("顆 NVIDIA GPU") < body.index("NVIDIA GPU(s) of your server idler")
    assert "低於 5%" in body and "under 5% busy" in body

    wait_gone(api, stack, "idler", timeout=STOP_AFTER + 60)
    [session] = quota_db.sessions("idler")
    assert session.stopped_at is not None and session.stop_reason == GPU_IDLE.message
    actions = {row.action: row for row in audit_rows(quota_db, session.id)}
    warned, stopped = actions["gpu_idle.warn"], actions["gpu_idle.stop"]
    assert (stopped.at - warned.at).total_seconds() >= STOP_AFTER - WARN_AFTER
    evidence = json.loads(stopped.detail)
    assert evidence["idle_seconds"] >= STOP_AFTER and evidence["source"] == "local"
    assert evidence["gpus"] == [
        {"device": "nvidia:0", "utilization_percent": 0.0, "memory_used_mib": 45872}
    ]
    # the spawner's stop closed the session after the decision: its charges end there
    assert session.stopped_at >= stopped.at
    charged = quota_db.balance(project_id)
    entries = len(quota_db.usage_entries(session.id))
    time.sleep(3 * INTERVAL + 1)  # more metering passes: nothing more is charged
    assert quota_db.balance(project_id) == charged
    assert len(quota_db.usage_entries(session.id)) == entries
    covered = [
        e.covers_to_seconds - e.covers_from_seconds for e in quota_db.usage_entries(session.id)
    ]
    assert sum(covered) == session.charged_seconds
    # one warning only, however many runs saw the idle server
    assert len([m for m in stack.mails() if m["To"] == "idler@example.tw"]) == 1
    # the person is told why on the hub's home page (once the hub asks again)
    time.sleep(2.5)
    assert "GPU 持續閒置" in browser.get(stack.url("/hub/home"), timeout=30).text
