"""The project's usage pages, the closing upload page and the operator dashboard through the
real stack (hub, proxy, OIDC provider, quota service): signed-in people over HTTP, and one
test in Chromium (Playwright) of the upload page."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta
from decimal import Decimal

import pytest
import requests
from playwright.sync_api import expect
from sqlalchemy import select

from quota_service import db as database
from quota_service.models import (
    AuditEvent,
    LedgerEntry,
    LedgerKind,
    Project,
    ProjectStatus,
    UsageSession,
)
from quota_service.timewindow import utcnow
from tests import test_browser
from tests.platform import QuotaDB
from tests.stack import Stack
from tests.test_closing import PDF, office

pytestmark = pytest.mark.e2e
chromium = test_browser.chromium  # the same browser fixture
sign_in = test_browser.sign_in
MAX_MB = 1  # AIPOWER_CLOSING_MAX_MB: 1 MiB files, 3 MiB request bodies


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    state = tmp_path_factory.mktemp("pages-stack")
    platform = Stack(state, metering_interval=30, extra_env={"AIPOWER_CLOSING_MAX_MB": str(MAX_MB)})
    platform.start()
    yield platform
    platform.stop()


@pytest.fixture(scope="module")
def quota_db(stack):
    db = QuotaDB(f"sqlite:///{stack.state / 'quota.sqlite'}")
    yield db
    db.close()


def xsrf(page_html: str) -> str:
    return re.search(r'name="_xsrf" value="([^"]+)"', page_html).group(1)


def in_english(browser: requests.Session, method: str, url: str, **kwargs) -> requests.Response:
    """One request with the page in English (``?lang=en``); the language the switch remembers
    in a cookie is forgotten again, so the session's other pages stay Traditional Chinese."""
    response = browser.request(method, url, params={"lang": "en"}, timeout=30, **kwargs)
    del browser.cookies["aipower_lang"]
    return response


def files_under(stack: Stack) -> list:
    root = stack.state / "files"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


# ---- usage on the project page, CSV ---------------------------------------------------------


@pytest.fixture(scope="module")
def used_project(stack, quota_db):
    """A member with one finished 2-GPU session of 90 minutes, charged 6 points."""
    project_id = quota_db.add_project("counter", business_number="24536806", millipoints=500_000)
    now = utcnow()
    with database.transaction(quota_db.factory) as db:
        account_id = db.get(Project, project_id).memberships[0].account_id
        session = UsageSession(
            project_id=project_id,
            account_id=account_id,
            username="counter",
            server_name="big",
            gpu_vendor="nvidia",
            gpu_count=2,
            interval_seconds=60,
            started_at=now - timedelta(hours=2),
            stopped_at=now - timedelta(minutes=30),
            charged_seconds=5400,
            stop_reason="=cmd|' /C calc'!A0",
        )
        db.add(session)
        db.flush()
        for index, amount in enumerate((-4_000, -2_000)):
            db.add(
                LedgerEntry(
                    project_id=project_id,
                    kind=LedgerKind.USAGE,
                    amount_millipoints=amount,
                    session_id=session.id,
                    period_index=index,
                    reason="usage",
                    actor="metering",
                    created_at=now - timedelta(minutes=60 - 30 * index),
                )
            )
    return project_id


def test_project_page_shows_weeks_breakdown_forecast_and_the_chart(stack, used_project):
    browser = stack.sign_in("counter")
    page = browser.get(stack.url(f"/services/quota/projects/{used_project}"), timeout=30)
    assert page.status_code == 200
    html = page.text
    assert '<svg id="burn-down"' in html and "<script" not in html
    assert 'class="forecast-line"' in html
    assert re.search(r'id="total-gpu-hours">3\.00<', html)  # 1.5 h × 2 GPUs
    assert re.search(r'id="total-points-used">6\.000<', html)
    # the window opened a day ago: this is week 1
    assert re.search(
        r'data-week="1" class="table-active" aria-current="true">\s*<td>1 \(本週\)', html
    )
    assert re.search(r'<tr data-member="counter"><td>counter</td><td class="text-end">1</td>', html)
    # no server runs: the average of the (1-day-old) window's use is the basis
    assert "沒有執行中的伺服器，依最近 1 天的平均消耗 0.250 點/小時，" in html
    assert f'href="/services/quota/projects/{used_project}/usage.csv"' in html
    assert '<th scope="col">使用者</th>' in html and ">User<" not in html


def test_project_page_in_english(stack, used_project):
    browser = stack.sign_in("counter")
    url = stack.url(f"/services/quota/projects/{used_project}")
    html = in_english(browser, "GET", url).text
    assert '<html lang="en">' in html
    assert "No server runs: at the 1-day average of 0.250 points per hour," in html
    assert re.search(r'aria-current="true">\s*<td>1 \(this week\)', html)
    assert '<title id="burn-down-title">Points burn-down</title>' in html
    assert "本週" not in html and "點數消耗" not in html
    # the switch was for that request: the next page is in Traditional Chinese again
    assert '<html lang="zh-Hant-TW">' in browser.get(url, timeout=30).text


def test_usage_csv_for_members_and_operators_only(stack, used_project):
    member = stack.sign_in("counter")
    response = member.get(stack.url(f"/services/quota/projects/{used_project}/usage.csv"))
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    disposition = response.headers["Content-Disposition"]
    assert re.match(
        rf'attachment; filename="aipower-project-{used_project}-usage-\d{{8}}-\d{{4}}\.csv"',
        disposition,
    )
    assert response.content.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(response.content.decode("utf-8-sig"))))
    assert [r["record"] for r in rows] == ["session", "usage", "usage"]
    assert rows[0]["gpu_hours"] == "3.000000" and rows[0]["points"] == "-6.000"
    assert rows[0]["reason"].startswith("'=")  # a formula would not run in Excel
    assert sum(Decimal(r["points"]) for r in rows if r["record"] == "usage") == Decimal("-6")
    operator = stack.sign_in("operator")
    assert operator.get(stack.url(f"/services/quota/projects/{used_project}/usage.csv")).ok
    stranger = stack.sign_in("applicant")
    refused = stranger.get(stack.url(f"/services/quota/projects/{used_project}/usage.csv"))
    assert refused.status_code == 403 and "你不是這個計畫的成員" in refused.text
    assert "403 沒有權限" in refused.text and "not a member" not in refused.text
    url = stack.url(f"/services/quota/projects/{used_project}/usage.csv")
    english = in_english(stack.sign_in("applicant"), "GET", url)
    assert english.status_code == 403 and "403 Not allowed" in english.text
    assert "you are not a member of this project" in english.text and "成員" not in english.text


# ---- the closing upload page -------------------------------------------------------------------


@pytest.fixture(scope="module")
def uploader(stack, quota_db):
    project_id = quota_db.add_project("uploader", business_number="12345675", millipoints=1000)
    return project_id, stack.sign_in("uploader")


def post_closing(stack, browser, project_id, *, files=None, video_url="", token=None):
    url = stack.url(f"/services/quota/projects/{project_id}/closing")
    if token is None:
        token = xsrf(browser.get(url, timeout=30).text)
    return browser.post(
        url,
        data={"_xsrf": token, "video_url": video_url},
        files=files or {},
        allow_redirects=False,
        timeout=60,
    )


def test_a_bad_upload_is_refused_field_by_field_and_keeps_the_typed_link(stack, uploader):
    project_id, browser = uploader
    response = post_closing(
        stack,
        browser,
        project_id,
        files={
            "final_report": ("report.pdf", b"just text", "application/pdf"),
            "slides": ("slides.pptx", office("pptx"), "application/octet-stream"),
        },
        video_url="ftp://video.example.tw/demo.mp4",
    )
    assert response.status_code == 400
    html = response.text
    assert 'data-field="final_report">檔案內容不是有效的 PDF 檔</div>' in html
    assert 'data-field="video_url">影片連結必須以 http:// 或 https:// 開頭</div>' in html
    assert 'aria-describedby="video-help video_url-error" aria-invalid="true"' in html
    assert 'value="ftp://video.example.tw/demo.mp4"' in html
    assert "請重新選擇檔案" in html
    assert files_under(stack) == []  # the valid slides were not kept either: all or nothing


def test_files_over_the_limit_get_a_message_and_bodies_over_the_server_limit_are_cut(
    stack, uploader
):
    project_id, browser = uploader
    big = b"%PDF-" + b"x" * (MAX_MB * 1024 * 1024)  # one byte over the limit
    response = post_closing(
        stack, browser, project_id, files={"final_report": ("big.pdf", big, "application/pdf")}
    )
    assert response.status_code == 400
    assert 'data-field="final_report">檔案超過 1 MB 上限</div>' in response.text
    # over the request-body limit (2 × 1 MiB + 1 MiB) the service's HTTP server stops
    # reading and drops the connection before any handler runs; the proxy answers for it
    token = xsrf(browser.get(stack.url(f"/services/quota/projects/{project_id}/closing")).text)
    huge = b"%PDF-" + b"x" * (3 * 1024 * 1024 + 10)
    try:
        status = post_closing(
            stack,
            browser,
            project_id,
            files={"final_report": ("huge.pdf", huge, "application/pdf")},
            token=token,
        ).status_code
    except requests.ConnectionError:  # dropped while we were still sending
        status = None
    assert status in (None, 400, 502, 503)
    # the service is still there
    assert browser.get(stack.url(f"/services/quota/projects/{project_id}/closing")).ok
    assert files_under(stack) == []


def test_a_valid_upload_is_stored_outside_the_database_and_can_be_downloaded(
    stack, uploader, quota_db
):
    project_id, browser = uploader
    slides = office("pptx")
    response = post_closing(
        stack,
        browser,
        project_id,
        files={
            "final_report": ("結案報告.pdf", PDF, "application/pdf"),
            "slides": ("demo-slides.pptx", slides, "application/octet-stream"),
        },
        video_url="https://www.youtube.com/watch?v=abc123",
    )
    assert response.status_code in (302, 303), response.text[:500]
    assert response.headers["Location"].endswith(f"/projects/{project_id}/closing?submitted=1")
    page = browser.get(stack.url(response.headers["Location"]), timeout=30).text
    assert 'id="received"' in page
    assert ">結案報告.pdf</a>" in page and ">demo-slides.pptx</a>" in page
    assert re.search(r"齊全，\d{4}-\d\d-\d\d \d\d:\d\d:\d\d 由 uploader 完成繳交", page)
    english = in_english(browser, "GET", stack.url(response.headers["Location"])).text
    assert 'id="received" role="status">Received.</div>' in english
    assert re.search(r"Complete, by uploader at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", english)
    assert '<th scope="row">Final report</th>' in english and "齊全" not in english
    stored = files_under(stack)
    assert sorted(p.name for p in stored) == sorted(["結案報告.pdf", "demo-slides.pptx"])
    assert all(
        p.is_relative_to(stack.state / "files" / "closing" / str(project_id)) for p in stored
    )
    download = browser.get(
        stack.url(f"/services/quota/projects/{project_id}/closing/final-report"), timeout=30
    )
    assert download.content == PDF
    assert download.headers["Content-Type"] == "application/pdf"
    assert (
        "filename*=UTF-8''%E7%B5%90%E6%A1%88%E5%A0%B1%E5%91%8A.pdf"
        in (download.headers["Content-Disposition"])
    )
    with quota_db.factory() as db:
        event = db.scalar(
            select(AuditEvent).where(AuditEvent.action == "closing.submit").order_by(AuditEvent.id)
        )
        assert event.actor == "uploader" and '"complete": true' in event.detail
    # others: no upload without the XSRF token, no access for a non-member
    forged = browser.post(
        stack.url(f"/services/quota/projects/{project_id}/closing"),
        data={"video_url": "https://evil.example.com/x"},
        allow_redirects=False,
    )
    assert forged.status_code == 403
    stranger = stack.sign_in("applicant")
    assert (
        stranger.get(stack.url(f"/services/quota/projects/{project_id}/closing")).status_code == 403
    )
    assert (
        stranger.get(
            stack.url(f"/services/quota/projects/{project_id}/closing/final-report")
        ).status_code
        == 403
    )


# ---- the operator dashboard ----------------------------------------------------------------


def test_dashboard_lists_projects_usage_and_overdue_reports(stack, quota_db, used_project):
    ended = quota_db.add_project("late", business_number="10458575", millipoints=1000)
    with database.transaction(quota_db.factory) as db:
        project = db.get(Project, ended)
        project.window_start = utcnow() - timedelta(days=130)
        project.window_end = utcnow() - timedelta(days=40)
        project.status = ProjectStatus.CLOSED
    operator = stack.sign_in("operator")
    html = operator.get(stack.url("/services/quota/admin"), timeout=30).text
    overdue = html.split('id="overdue">')[1].split("</table>")[0]
    assert f'<tr data-project="{ended}">' in overdue and "計畫 late" in overdue
    assert "結案報告、簡報、展示影片連結" in overdue
    assert f'data-project="{used_project}"' not in overdue
    projects = html.split('id="projects">')[1].split("</table>")[0]
    row = projects.split(f'<tr data-project="{used_project}">')[1].split("</tr>")[0]
    assert "3.00 <small>(第 1 週)</small>" in row and "494.000" in row and "已核定" in row
    english = in_english(operator, "GET", stack.url("/services/quota/admin")).text
    assert "<h2>Overdue closing reports</h2>" in english
    assert "final report, slides, demo video link" in english.split('id="overdue">')[1]
    row = english.split(f'<tr data-project="{used_project}">')[1].split("</tr>")[0]
    assert "3.00 <small>(week 1)</small>" in row and "Approved" in row
    # the forms the other tests use are still there
    assert 'action="/services/quota/admin/projects/1/grant"' in html
    assert 'action="/services/quota/admin/projects/1/suspend"' in html
    assert stack.sign_in("trainee").get(stack.url("/services/quota/admin")).status_code == 403


def test_operator_adjusts_points_up_and_down_with_a_reason(stack, quota_db):
    project_id = quota_db.add_project("adjusted", business_number="53212539", millipoints=10_000)
    operator = stack.sign_in("operator")
    admin = stack.url("/services/quota/admin")
    action = stack.url(f"/services/quota/admin/projects/{project_id}/adjust")
    token = xsrf(operator.get(admin).text)
    bad = operator.post(action, data={"_xsrf": token, "points": "-1.0005", "reason": " "})
    assert bad.status_code == 400
    section = bad.text.split(f'id="project-{project_id}"')[1].split("</section>")[0]
    assert 'data-field="points">點數最多三位小數</div>' in section
    assert 'data-field="reason">請填寫原因</div>' in section
    assert 'value="-1.0005"' in section
    # next to the adjustment's fields, not the grant's
    assert f'id="adjust-points-{project_id}-error"' in section
    assert f'id="grant-points-{project_id}-error"' not in section
    zero = operator.post(action, data={"_xsrf": token, "points": "0", "reason": "x"})
    assert zero.status_code == 400 and "調整點數不可為 0" in zero.text
    english = in_english(operator, "POST", action, data={"_xsrf": token, "points": "0"})
    assert english.status_code == 400
    assert 'data-field="points">an adjustment cannot be zero</div>' in english.text
    assert 'data-field="reason">a reason is required</div>' in english.text
    done = operator.post(
        action,
        data={"_xsrf": token, "points": "-2.5", "reason": "重複核發 / double grant"},
        allow_redirects=False,
    )
    assert done.status_code == 302
    assert quota_db.balance(project_id) == 7_500
    operator.post(action, data={"_xsrf": token, "points": "0.001", "reason": "補 / top-up"})
    assert quota_db.balance(project_id) == 7_501
    with quota_db.factory() as db:
        rows = db.scalars(
            select(LedgerEntry)
            .where(LedgerEntry.project_id == project_id, LedgerEntry.kind == "adjustment")
            .order_by(LedgerEntry.id)
        ).all()
        assert [(r.amount_millipoints, r.actor) for r in rows] == [
            (-2_500, "operator"),
            (1, "operator"),
        ]
        assert rows[0].reason == "重複核發 / double grant"
    trainee = stack.sign_in("trainee")
    own_form = trainee.get(stack.url("/services/quota/projects/1/closing")).text
    refused = trainee.post(action, data={"_xsrf": xsrf(own_form), "points": "5", "reason": "x"})
    assert refused.status_code == 403 and "只有營運管理員可以使用" in refused.text
    assert quota_db.balance(project_id) == 7_501


# ---- in a browser ------------------------------------------------------------------------------


def test_trainee_uploads_closing_documents_in_the_browser(stack, chromium, tmp_path):
    page = chromium.new_page()
    sign_in(page, stack, "trainee")
    page.goto(stack.url("/services/quota/projects/1"))
    page.locator("#closing-summary a").click()
    page.wait_for_url("**/projects/1/closing")
    expect(page.locator("#due")).to_contain_text("23:59:59")
    # invalid: a text file named .pdf and a link that is not http(s)
    page.locator("#final_report").set_input_files(
        {"name": "report.pdf", "mimeType": "application/pdf", "buffer": b"not a pdf"}
    )
    page.locator("#video_url").fill("ftp://video.example.tw/demo.mp4")
    page.locator("#closing-form button").click()
    expect(page.locator('[data-field="final_report"]')).to_have_text("檔案內容不是有效的 PDF 檔")
    expect(page.locator('[data-field="video_url"]')).to_contain_text("http:// 或 https://")
    expect(page.locator("#video_url")).to_have_value("ftp://video.example.tw/demo.mp4")
    # valid
    page.locator("#final_report").set_input_files(
        {"name": "final-report.pdf", "mimeType": "application/pdf", "buffer": PDF}
    )
    page.locator("#slides").set_input_files(
        {"name": "slides.odp", "mimeType": "application/octet-stream", "buffer": office("odp")}
    )
    page.locator("#video_url").fill("https://www.youtube.com/watch?v=demo")
    page.locator("#closing-form button").click()
    page.wait_for_url("**/projects/1/closing?submitted=1")
    expect(page.locator("#received")).to_be_visible()
    expect(page.locator("#submitted-final-report")).to_have_text("final-report.pdf")
    expect(page.locator("#submitted-slides")).to_have_text("slides.odp")
    expect(page.locator("#submitted-video")).to_have_text("https://www.youtube.com/watch?v=demo")
    expect(page.locator("#closing-status")).to_contain_text("由 trainee 完成繳交")
    page.screenshot(path=str(tmp_path / "closing.png"), full_page=True)
    page.close()
