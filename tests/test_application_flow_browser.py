"""Issue 3's whole flow in a real browser (Debian's Chromium driven by Playwright) against the
real stack: a company's founder fills in and submits a training application, the operator
qualifies it and assigns reviewers, a reviewer scores it, the operator records the meeting's
decision and awards it, and the trainee the award named signs in for the first time and starts
a GPU server charged to the new project.

The identity provider is the demo's OIDC provider; the e-mail addresses it vouches for are
what ties the founder and the new trainee to the accounts the award names."""

from __future__ import annotations

import re

import pytest
import requests
from playwright.sync_api import expect
from sqlalchemy import select

from quota_service import awards
from quota_service import db as database
from quota_service.models import Account, Application, Project
from quota_service.timewindow import taipei, utcnow
from tests import test_browser, test_project_pages, test_review_pages
from tests.stack import Stack
from tests.test_application_browser import fill_in
from tests.test_application_pages import documents, flatten
from tests.test_review import TRAINING_SCORES
from tests.test_review_browser import qualify_and_assign, score_without_javascript

pytestmark = pytest.mark.e2e
chromium = test_browser.chromium
sign_in = test_browser.sign_in
quota_db = test_project_pages.quota_db  # this module's stack's database
QUOTA = "/services/quota/"
FOUNDER_EMAIL = "lead@startup.example.tw"  # the sample application's project lead
TRAINEE_EMAIL = "mei.chen@startup.example.tw"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    platform = Stack(tmp_path_factory.mktemp("flow-browser"), metering_interval=5).start()
    yield platform
    platform.stop()


def vouch_for(stack: Stack, sub: str, email: str) -> None:
    """The identity provider's record of a person (as a company's Keycloak would have)."""
    answer = requests.put(
        f"http://127.0.0.1:{stack.oidc_port}/users/{sub}", json={"email": email}, timeout=10
    )
    assert answer.status_code == 204, answer.text


def test_from_application_to_a_running_server(stack, chromium, quota_db, tmp_path):
    # 1. the founder applies: fills in the whole training form and submits it
    vouch_for(stack, "founder", FOUNDER_EMAIL)
    founder = chromium.new_page()
    sign_in(founder, stack, "founder")
    founder.goto(stack.url(QUOTA + "applications"))
    founder.get_by_label(re.compile(r"示範梯次.*模型訓練類.*受理至")).check()
    founder.get_by_role("button", name="開始申請").click()
    founder.wait_for_url(re.compile(r".*/applications/\d+$"))
    app_id = int(founder.url.rsplit("/", 1)[1])
    fill_in(founder, flatten(documents("53212539")))
    founder.get_by_role("button", name="送出", exact=True).click()
    founder.wait_for_url("**?submitted=1")
    expect(founder.locator("#status")).to_have_text("已送出")

    # 2. the operator qualifies it and assigns three reviewers
    with database.transaction(quota_db.factory) as db:
        reviewers = {n: a.id for n, a in test_review_pages.add_reviewers(db).items()}
    operator = chromium.new_page()
    sign_in(operator, stack, "operator")
    qualify_and_assign(operator, stack, app_id, reviewers)

    # 3. the reviewer scores it in the browser; the two others' sheets come through the domain
    with database.transaction(quota_db.factory) as db:
        application = db.get(Application, app_id)
        for name in ("reviewer2", "reviewer3"):
            person = db.get(Account, reviewers[name])
            test_review_pages.score(db, person, application, TRAINING_SCORES)
    score_without_javascript(chromium, stack, app_id)

    # 4. the review meeting selects it at L1; the award names a trainee by e-mail
    operator.goto(stack.url(QUOTA + f"admin/applications/{app_id}"))
    operator.get_by_role("link", name=re.compile("^排名")).click()
    row = operator.locator(f"#application-{app_id}")
    expect(row.locator(".mean")).to_have_text("84.25")
    row.get_by_label("會議決議入選").check()
    row.get_by_label("級別（入選時）").select_option("L1")
    row.get_by_label("會議紀錄").fill("會議決議入選")
    row.get_by_role("button", name="記錄決議").click()
    row = operator.locator(f"#application-{app_id}")
    row.get_by_role("link", name="核定與使用權限").click()
    today = taipei(utcnow()).date().isoformat()
    operator.get_by_label("通知日期（台北時間）：使用期間自當日起算").fill(today)
    operator.locator("#award-networks").fill("203.0.113.7")
    operator.locator("#award-trainees").fill(TRAINEE_EMAIL)
    operator.get_by_role("button", name="核定 L1：核發 1000 點").click()
    expect(operator.locator("#done")).to_contain_text("已核定")
    operator.close()

    # the founder sees the award on the application, and, as the project's lead, adds a
    # trainee: a typo comes back at the field with what was typed
    founder.reload()
    expect(founder.locator("#status")).to_have_text("已核定")
    box = founder.get_by_label("電子郵件地址，一行一個")
    box.fill("kai.lin@startup.example.tw\nkai.lin@startup")
    founder.get_by_role("button", name="新增學員").click()
    expect(founder.locator("#trainees-error")).to_contain_text("kai.lin@startup")
    expect(founder.get_by_label("電子郵件地址，一行一個")).to_have_value(
        "kai.lin@startup.example.tw\nkai.lin@startup"
    )
    founder.get_by_label("電子郵件地址，一行一個").fill("kai.lin@startup.example.tw")
    founder.get_by_role("button", name="新增學員").click()
    expect(founder.locator("#notice")).to_have_text("已新增學員。")
    expect(founder.locator("#members")).to_contain_text("kai.lin@startup.example.tw")
    founder.close()

    # 5. the new trainee signs in for the first time and starts a server on the new project
    vouch_for(stack, "mei", TRAINEE_EMAIL)
    trainee = chromium.new_page()
    sign_in(trainee, stack, "mei")
    expect(trainee.locator("#aipower-balance")).to_have_text("1000.000")
    trainee.locator("#start").click()
    trainee.wait_for_url("**/hub/spawn**")
    trainee.locator("#gpu-vendor-nvidia").check()
    trainee.locator("#gpu-count").select_option("1")
    trainee.locator("#spawn_form button[type=submit]").click()
    trainee.wait_for_url("**/user/mei/lab**", timeout=90_000)
    expect(trainee.locator("#jp-main-dock-panel")).to_be_visible(timeout=60_000)
    trainee.screenshot(path=str(tmp_path / "trainee-lab.png"))

    with database.transaction(quota_db.factory) as db:
        (project,) = db.scalars(
            select(Project).where(Project.company.has(business_number="53212539"))
        ).all()
        members = {m.account.username: m.role for m in project.memberships}
        project_id = project.id
    assert members["founder"] == "lead" and members["mei"] == "trainee"
    assert members[awards.username_for_email("kai.lin@startup.example.tw")] == "trainee"
    trainee.goto(stack.url(QUOTA + f"projects/{project_id}"))
    expect(trainee.locator("table.servers")).to_contain_text("NVIDIA (CUDA)")
    trainee.goto(stack.url("/hub/home"))
    trainee.locator("#stop").click()
    expect(trainee.locator("#stop")).to_be_hidden(timeout=60_000)
    trainee.close()
