"""Every sanction's effect, end to end: the real hub, node proxy, OIDC provider, quota
service, single-user servers and SMTP catcher. The GPUs are simulated (no GPU here).

The operator works through the register's JSON API (suspension, appeal) and its pages
(termination, the purge confirmation), as a person would; the module runs once with the quota
database on SQLite and once on PostgreSQL.
"""

from __future__ import annotations

import re
import time

import pytest
from sqlalchemy import select

from quota_service import awards, network
from quota_service import db as database
from quota_service.models import (
    Account,
    Application,
    Award,
    Category,
    Project,
    Purge,
    Round,
)
from quota_service.timewindow import utcnow
from tests.platform import QuotaDB, wait_for
from tests.stack import Stack
from tests.test_e2e import server_model, start, wait_gone, wait_ready

pytestmark = pytest.mark.e2e
INTERVAL = 2
REFRESH_AGE = 2  # seconds before the hub asks the quota service again who may do what
GPU = {"gpu_vendor": "nvidia", "gpu_count": 1}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request, tmp_path_factory):
    state = tmp_path_factory.mktemp(f"violations-{request.param}")
    url = f"sqlite:///{state / 'quota.sqlite'}"
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_server").create_database(f"v_{int(time.time())}")
    platform = Stack(
        state,
        quota_db_url=url,
        metering_interval=INTERVAL,
        extra_env={"AIPOWER_AUTH_REFRESH_AGE": str(REFRESH_AGE), "AIPOWER_POLL_INTERVAL": "2"},
    )
    platform.start()
    yield platform
    platform.stop()
    assert "job failed" not in platform.log()  # the notice run (with the idle rule) never failed


@pytest.fixture(scope="module")
def quota_db(stack):
    db = QuotaDB(stack.quota_db_url)
    yield db
    db.close()


def member(stack, username: str):
    """A person signed in: their browser session and an API client with their token."""
    browser = stack.sign_in(username)
    return browser, stack.api(stack.token_for(browser, username))


@pytest.fixture(scope="module")
def operator(stack):
    return member(stack, "operator")


def mails_about(stack, text: str) -> list:
    return [m for m in stack.mails() if text in str(m["Subject"])]


def service_xsrf(page_html: str) -> str:
    return re.search(r'name="_xsrf" value="([^"]+)"', page_html).group(1)


def refused_with_reason(stack, api, browser, username: str, reason: str) -> None:
    """A start is refused (403), and the hub's home page says why."""
    response = start(api, stack, username, GPU)
    assert response.status_code == 403, response.text
    assert server_model(api, stack, username) is None
    assert reason in browser.get(stack.url("/hub/home"), timeout=30).text


def test_a_suspension_stops_the_running_server_and_refuses_starts_until_it_is_lifted(
    stack, quota_db, operator
):
    project_id = quota_db.add_project("suspect", business_number="53212539", millipoints=100_000)
    browser, api = member(stack, "suspect")
    assert start(api, stack, "suspect", GPU).status_code in (201, 202)
    wait_ready(api, stack, "suspect")
    _, ops = operator
    register = stack.url("/services/quota/api/v1/violations")

    recorded = ops.post(
        register,
        json={"project_id": project_id, "kind": "prohibited_use", "summary": "挖礦 / mining",
              "evidence": {"process": "xmrig", "gpu_utilisation": "100%"}},
        timeout=30,
    )  # fmt: skip
    assert recorded.status_code == 201, recorded.text
    violation = recorded.json()
    assert (violation["status"], violation["evidence"]["process"]) == ("recorded", "xmrig")
    # a member cannot sanction; without a summary nothing is recorded
    assert api.post(f"{register}/{violation['id']}/sanctions", json={"kind": "suspend",
                    "reason": "x"}, timeout=30).status_code == 403  # fmt: skip
    empty = ops.post(register, json={"project_id": project_id, "kind": "other"}, timeout=30)
    assert empty.status_code == 400 and "summary" in empty.json()["errors"]

    imposed = ops.post(
        f"{register}/{violation['id']}/sanctions",
        json={"kind": "suspend", "reason": "調查期間暫停 / suspended while investigated"},
        timeout=60,
    )
    assert imposed.status_code == 201, imposed.text
    [suspension] = imposed.json()["sanctions"]
    assert (suspension["kind"], suspension["status"]) == ("suspend", "active")
    assert imposed.json()["project"]["status"] == "suspended"
    # stopped: the service asks the hub at once (the metering pass would within an interval)
    wait_gone(api, stack, "suspect", timeout=INTERVAL + 10)
    assert quota_db.sessions("suspect")[-1].stop_reason.startswith("你的計畫已被營運單位停權")
    time.sleep(REFRESH_AGE + 0.5)
    refused_with_reason(stack, api, browser, "suspect", "你的計畫已被營運單位停權")

    # the admin page's plain "resume" does not bypass the sanction
    ops_browser, _ = operator
    admin = ops_browser.get(stack.url("/services/quota/admin"), timeout=30).text
    resumed = ops_browser.post(
        stack.url(f"/services/quota/admin/projects/{project_id}/resume"),
        data={"_xsrf": service_xsrf(admin), "reason": "恢復"},
        timeout=30,
    )
    assert resumed.status_code == 400 and "請在違規紀錄解除" in resumed.text
    assert quota_db.project_status(project_id) == "suspended"

    lifted = ops.post(
        stack.url(f"/services/quota/api/v1/sanctions/{suspension['id']}/lift"),
        json={"reason": "查無挖礦 / no mining found"},
        timeout=30,
    )
    assert lifted.status_code == 200, lifted.text
    assert lifted.json()["project"]["status"] == "approved"
    time.sleep(REFRESH_AGE + 0.5)
    assert start(api, stack, "suspect", GPU).status_code in (201, 202)
    wait_ready(api, stack, "suspect")
    api.delete(stack.url("/hub/api/users/suspect/server"), timeout=60)
    wait_gone(api, stack, "suspect")
    # each step reached the company's contact (here the only member) by mail
    subjects = ("violation recorded", "suspended", "lifted")
    for subject in subjects:
        wait_for(lambda s=subject: mails_about(stack, s), 15, f"a mail about {subject}")
    assert {m["To"] for s in subjects for m in mails_about(stack, s)} == {"suspect@example.tw"}


def inference_award(quota_db, username: str, business_number: str) -> tuple[int, str]:
    """An inference project with its award and the company's API key (the award's rows
    written directly: the application flow has its own tests)."""
    project_id = quota_db.add_project(
        username, business_number=business_number, millipoints=100_000
    )
    now = utcnow()
    with database.transaction(quota_db.factory) as db:
        project = db.get(Project, project_id)
        project.category = Category.INFERENCE
        operator = db.scalar(select(Account).where(Account.username == "operator"))
        round_ = Round(
            name="e2e", category="inference", opens_at=now, closes_at=now, created_at=now
        )
        db.add(round_)
        db.flush()
        application = Application(
            round_id=round_.id, category="inference", account_id=operator.id, status="awarded",
            project_id=project_id, created_at=now, updated_at=now,
        )  # fmt: skip
        db.add(application)
        db.flush()
        award = Award(
            application_id=application.id, project_id=project_id, tier="L1", points=100,
            notice_date=now, window_start=project.window_start, window_end=project.window_end,
            awarded_by="operator", created_at=now,
        )  # fmt: skip
        db.add(award)
        db.flush()
        return project_id, awards.regenerate_api_key(db, operator, award, now=now)


def test_termination_through_the_pages_after_two_violations_purges_only_when_confirmed(
    stack, quota_db, operator
):
    project_id, api_key = inference_award(quota_db, "terminee", "91263438")
    browser, api = member(stack, "terminee")
    assert start(api, stack, "terminee", GPU).status_code in (201, 202)
    wait_ready(api, stack, "terminee")
    home = stack.state / "homes" / "terminee"
    (home / "models").mkdir(parents=True, exist_ok=True)
    (home / "models" / "weights.bin").write_bytes(b"x" * 4096)
    ops_browser, _ = operator
    register = stack.url("/services/quota/violations")

    def record(summary: str) -> int:
        page = ops_browser.get(register, timeout=30)
        assert page.status_code == 200 and 'id="record-manual"' in page.text
        done = ops_browser.post(
            register,
            data={"_xsrf": service_xsrf(page.text), "source": "manual", "project_id": project_id,
                  "kind": "prohibited_use", "summary": summary, "description": "發票 / invoices"},
            timeout=30,
        )  # fmt: skip
        assert done.status_code == 200 and "/services/quota/violations/" in done.url, done.text
        return int(done.url.rsplit("/", 1)[1])

    first = record("轉售算力 / reselling GPU time")
    page = ops_browser.get(f"{register}/{first}", timeout=30).text
    terminate = {"_xsrf": service_xsrf(page), "kind": "terminate", "reason": "終止 / terminate"}
    # one violation is not enough (and no urgent reason): the form says so, keeps the reason
    refused = ops_browser.post(f"{register}/{first}/sanction", data=terminate, timeout=30)
    assert refused.status_code == 400
    assert 'data-field="urgent_reason"' in refused.text and "累計 1 筆違規" in refused.text
    assert ">終止 / terminate</textarea>" in refused.text
    assert server_model(api, stack, "terminee")["ready"]

    second = record("再次轉售 / reselling again")
    done = ops_browser.post(f"{register}/{second}/sanction", data=terminate, timeout=60)
    assert done.status_code == 200 and 'data-kind="terminate" data-status="active"' in done.text
    wait_gone(api, stack, "terminee", timeout=INTERVAL + 10)
    time.sleep(REFRESH_AGE + 0.5)
    refused_with_reason(stack, api, browser, "terminee", "已被營運單位終止算力服務")
    with quota_db.factory() as db:
        assert awards.verify_api_key(db, api_key) is None  # the company's key is revoked
    # terminated, not purged: the storage waits for the operator's confirmation
    assert (home / "models" / "weights.bin").exists()
    assert quota_db.count(Purge) == 0

    wait_for(lambda: quota_db.sessions("terminee")[-1].stopped_at, 15, "the session closed")
    sanction_id = int(re.search(r'action="/services/quota/sanctions/(\d+)/purge"', done.text)[1])
    confirmed = ops_browser.post(
        stack.url(f"/services/quota/sanctions/{sanction_id}/purge"),
        data={"_xsrf": service_xsrf(done.text), "reason": "確認刪除 / confirmed"},
        timeout=60,
    )
    assert confirmed.status_code == 200
    assert 'data-kind="terminate" data-status="completed"' in confirmed.text
    assert not home.exists()
    with quota_db.factory() as db:
        [purge] = db.scalars(select(Purge).where(Purge.project_id == project_id)).all()
        assert purge.bytes_deleted >= 4096 and purge.actor == "operator"
    wait_for(lambda: mails_about(stack, "storage purged"), 15, "the purge mail")


def test_members_read_their_violations_and_appeal_strangers_see_nothing(stack, quota_db, operator):
    project_id = quota_db.add_project("appellant", business_number="80029138", millipoints=10_000)
    _, ops = operator
    with database.transaction(quota_db.factory) as db:  # two connections refused from China
        refusal = network.region_refusal(network.parse_address("1.2.4.8"))
        events = [
            network.record_refusal(db, refusal, username="appellant", attempt=f"GET /hub/{n}",
                                   actor="appellant", now=utcnow())
            for n in ("home", "spawn")
        ]  # fmt: skip
        db.flush()
        ids = [e.id for e in events]
    evidence = ops.get(stack.url("/services/quota/api/v1/violations/evidence"), timeout=30).json()
    assert set(ids) <= {r["audit_event_id"] for r in evidence["refusals"] if not r["violation_id"]}
    recorded = ops.post(
        stack.url("/services/quota/api/v1/violations"),
        json={"refusals": ids, "summary": "自中國連線兩次 / two connections from China"},
        timeout=30,
    )
    assert recorded.status_code == 201, recorded.text
    violation = recorded.json()
    assert (violation["kind"], violation["project"]["id"]) == ("banned_region", project_id)
    assert [r["address"] for r in violation["evidence"]["refusals"]] == ["1.2.4.8", "1.2.4.8"]
    vid = violation["id"]
    not_a_list = ops.post(stack.url("/services/quota/api/v1/violations"),
                          json={"refusals": "12", "summary": "x"}, timeout=30)  # fmt: skip
    assert not_a_list.status_code == 400 and list(not_a_list.json()["errors"]) == ["refusals"]
    again = ops.post(stack.url("/services/quota/api/v1/violations"), json={"refusals": ids[:1],
                     "summary": "again"}, timeout=30)  # fmt: skip
    assert again.status_code == 409
    ops.post(stack.url(f"/services/quota/api/v1/violations/{vid}/notes"),
             json={"text": "內部：查 VPN", "internal": True}, timeout=30)  # fmt: skip

    browser, api = member(stack, "appellant")
    mine = api.get(stack.url("/services/quota/api/v1/violations"), timeout=30).json()
    assert [v["id"] for v in mine] == [vid]
    page = browser.get(stack.url(f"/services/quota/violations/{vid}"), timeout=30)
    assert page.status_code == 200 and "內部：查 VPN" not in page.text
    assert 'id="appeal"' in page.text and 'id="sanction"' not in page.text
    empty = browser.post(stack.url(f"/services/quota/violations/{vid}/appeal"),
                         data={"_xsrf": service_xsrf(page.text), "text": " "}, timeout=30)  # fmt: skip
    assert empty.status_code == 400 and 'data-field="text"' in empty.text
    appealed = browser.post(
        stack.url(f"/services/quota/violations/{vid}/appeal"),
        data={"_xsrf": service_xsrf(page.text), "text": "那是公司 VPN 的出口 / our VPN's exit"},
        timeout=30,
    )
    assert appealed.status_code == 200 and 'data-status="appealed"' in appealed.text
    assert quota_db.project_of("appellant") == project_id

    stranger, stranger_api = member(stack, "trainee")
    assert (
        stranger.get(stack.url(f"/services/quota/violations/{vid}"), timeout=30).status_code == 404
    )
    assert stranger_api.get(stack.url(f"/services/quota/api/v1/violations/{vid}"),
                            timeout=30).status_code == 404  # fmt: skip
    assert stranger_api.get(stack.url("/services/quota/api/v1/violations"), timeout=30).json() == []
    assert stranger_api.get(stack.url("/services/quota/api/v1/violations/evidence"),
                            timeout=30).status_code == 403  # fmt: skip
    wait_for(lambda: mails_about(stack, "appeal filed"), 15, "the appeal reaches the operators")
    assert any(m["To"] == "operator@aipower.example.tw" for m in mails_about(stack, "appeal filed"))
