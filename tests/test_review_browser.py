"""The review in a real browser (Debian's Chromium driven by Playwright) against the real
stack: the operator qualifies a submitted application and assigns reviewers, a reviewer
scores it in a browser without JavaScript (a bad score comes back at its field), the
operator records the review meeting's decision and awards it."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from quota_service import applications as apps
from quota_service import db as database
from quota_service.models import Account, Application
from tests import test_browser, test_project_pages, test_review_pages
from tests.application_flow import account, make_round, submitted
from tests.test_review import TRAINING_SCORES

pytestmark = pytest.mark.e2e
chromium = test_browser.chromium  # the same browser, stack and database fixtures
stack = test_browser.stack
quota_db = test_project_pages.quota_db
sign_in = test_browser.sign_in
QUOTA = "/services/quota/"


@pytest.fixture(scope="module")
def submitted_application(quota_db) -> dict[str, int]:
    with database.transaction(quota_db.factory) as db:
        operator = db.scalar(select(Account).where(Account.username == "operator"))
        reviewers = test_review_pages.add_reviewers(db)
        owner = account(db, "browser-owner", email="owner@startup.example.tw")
        application = submitted(db, owner, make_round(db, operator), business_number="22099131")
        return {"application": application.id} | {n: p.id for n, p in reviewers.items()}


def qualify_and_assign(operator, stack, app_id: int, reviewer_ids: dict[str, int]) -> None:
    """The operator, in the browser: every criterion passed, then three reviewers."""
    # qualification: from the admin page to the application, every criterion passed
    operator.goto(stack.url(QUOTA + "admin"))
    operator.get_by_role("link", name="申請案列表").click()
    operator.locator(f'#queue tr[data-application="{app_id}"] a').first.click()
    expect(operator.locator("h1")).to_contain_text("新創應用有限公司")
    operator.get_by_role("button", name="開始資格審查").click()
    expect(operator.locator("#done")).to_have_text("已開始資格審查。")
    for criterion in apps.CRITERIA:
        row = operator.locator(f'#criteria tr[data-criterion="{criterion}"]')
        row.get_by_label("通過", exact=True).check()
        row.get_by_role("button", name="記錄").click()
        expect(
            operator.locator(f'tr[data-criterion="{criterion}"] [data-passed]')
        ).to_have_attribute("data-passed", "true")
    operator.get_by_role("button", name="資格審查通過：進入專業審查").click()
    expect(operator.locator("[data-status]").first).to_have_text("專業審查中")

    # three reviewers; the one who works at the applicant's company shows its conflict
    expect(operator.locator('[data-candidate="insider"] .conflict')).to_contain_text(
        "startup.example.tw"
    )
    for name in ("reviewer", "reviewer2", "reviewer3"):
        operator.locator(f"#assign-{reviewer_ids[name]}").check()
    operator.get_by_role("button", name="指派", exact=True).click()
    expect(operator.locator("#done")).to_have_text("已指派審查委員。")
    expect(operator.locator("#assignments tbody tr")).to_have_count(3)


def score_without_javascript(chromium, stack, app_id: int) -> None:
    """The reviewer "reviewer" scores the application in a browser without JavaScript."""
    # the reviewer, without JavaScript: a score of 101 comes back at its field, the rest kept
    context = chromium.new_context(java_script_enabled=False)
    reviewer = context.new_page()
    sign_in(reviewer, stack, "reviewer")
    reviewer.goto(stack.url(QUOTA + "review"))
    reviewer.locator(f'#assignments tr[data-application="{app_id}"] a').first.click()
    expect(reviewer.locator('#sheet-form tr[data-criterion="importance"] .weight')).to_have_text(
        "30%"
    )
    for name, value in TRAINING_SCORES.items():
        reviewer.locator(f"#score-{name}").fill(str(value))
    reviewer.locator("#score-importance").fill("101")
    reviewer.locator("#comment-to-applicant").fill("資料集描述清楚")
    reviewer.get_by_role("button", name="儲存並送出評分").click()
    expect(reviewer.locator("#score-importance-error")).to_have_text("請填 0 到 100 的整數")
    expect(reviewer.locator("#score-importance")).to_have_value("101")
    expect(reviewer.locator("#score-model_resources")).to_have_value("90")
    expect(reviewer.locator("#comment-to-applicant")).to_have_value("資料集描述清楚")
    reviewer.locator("#score-importance").fill("80")
    reviewer.get_by_role("button", name="儲存並送出評分").click()
    expect(reviewer.locator("#total")).to_have_text("84.25")  # 78.25 + 3 bonus items × 2
    context.close()


def test_operator_and_reviewer_take_an_application_from_qualification_to_award(
    stack, chromium, quota_db, submitted_application, tmp_path
):
    app_id = submitted_application["application"]
    operator = chromium.new_page()
    sign_in(operator, stack, "operator")

    qualify_and_assign(operator, stack, app_id, submitted_application)

    # the other two reviewers' sheets (the same form, through the domain): 76 and 106
    with database.transaction(quota_db.factory) as db:
        application = db.get(Application, app_id)
        for name, score in (("reviewer2", 70), ("reviewer3", 100)):
            person = db.get(Account, submitted_application[name])
            test_review_pages.score(db, person, application, dict.fromkeys(TRAINING_SCORES, score))

    score_without_javascript(chromium, stack, app_id)

    # the review meeting: the mean of 84.25, 76 and 106, the disagreement flagged; L3
    operator.goto(stack.url(QUOTA + f"admin/applications/{app_id}"))
    operator.get_by_role("link", name=re.compile("^排名")).click()
    row = operator.locator(f"#application-{app_id}")
    expect(row.locator(".mean")).to_have_text("88.75")
    expect(row.locator(".flag")).to_be_visible()
    row.get_by_label("會議決議入選").check()
    row.get_by_label("級別（入選時）").select_option("L3")
    row.get_by_label("會議紀錄").fill("會議決議入選")
    row.get_by_role("button", name="記錄決議").click()
    row = operator.locator(f"#application-{app_id}")
    expect(row.locator("[data-status]")).to_have_text("入選")

    # the award: trusted addresses, a trainee; 6000 points from the notice date
    row.get_by_role("link", name="核定與使用權限").click()
    expect(operator.locator("#award-points")).to_have_text("6000")
    operator.get_by_label("通知日期（台北時間）：使用期間自當日起算").fill("2026-12-01")
    operator.locator("#award-networks").fill("203.0.113.7\n2001:db8:1::/48")
    operator.locator("#award-trainees").fill("trainee.two@startup.example.tw")
    operator.get_by_role("button", name="核定 L3：核發 6000 點").click()
    expect(operator.locator("#done")).to_contain_text("已核定")
    expect(operator.locator("#award-window")).to_have_text(
        "2026-12-01 00:00:00 → 2027-02-28 23:59:59"
    )
    expect(operator.locator('#members [data-role="trainee"]')).to_contain_text(
        "trainee.two@startup.example.tw"
    )
    operator.screenshot(path=str(tmp_path / "awarded.png"), full_page=True)
    operator.close()
