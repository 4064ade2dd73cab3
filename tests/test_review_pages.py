"""The operator's and the reviewers' pages through the real stack (hub, node proxy, OIDC
provider, quota service): people signed in over HTTP, forms posted with the service's XSRF
token. The domain's rules are tested in test_applications, test_review and test_awards; here
the pages: what they show, errors at the field with the input kept, permissions, a form sent
twice, the language. The whole module runs with the quota database on SQLite and on
PostgreSQL."""

from __future__ import annotations

import time
from datetime import date, timedelta

import pytest
import requests
from bs4 import BeautifulSoup
from sqlalchemy import func, select

from quota_service import application_form, closing, ledger, review
from quota_service import applications as apps
from quota_service import db as database
from quota_service.awards import hash_key
from quota_service.models import (
    Account,
    ApiKey,
    Application,
    ApplicationStatusChange,
    Award,
    Membership,
    Notice,
    ReviewerAssignment,
    Round,
    ScoreSheet,
    SupplementRequest,
)
from quota_service.storage import LocalFileStore
from quota_service.timewindow import TAIPEI, taipei, utcnow
from tests import application_samples as sample
from tests import test_e2e
from tests.application_flow import NOW, account, make_round, qualified, submitted
from tests.platform import QuotaDB
from tests.stack import Stack
from tests.test_closing import PDF
from tests.test_review import INFERENCE_SCORES, TRAINING_SCORES

pytestmark = pytest.mark.e2e
PREFIX = "/services/quota/"
quota_db = test_e2e.quota_db  # the same fixture: the stack's quota database
REVIEWERS = {
    "reviewer2": "reviewer2@ntu.example.edu.tw",
    "reviewer3": "reviewer3@nycu.example.edu.tw",
    # works where the sample applicant works (its lead and contact are @startup.example.tw)
    "insider": "insider@startup.example.tw",
}


# ---- the platform and its data ------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request, tmp_path_factory):
    state = tmp_path_factory.mktemp(f"review-pages-{request.param}")
    url = f"sqlite:///{state / 'quota.sqlite'}"
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_server").create_database(
            f"review_pages_{time.monotonic_ns()}"
        )
    platform = Stack(state, quota_db_url=url, metering_interval=30, notice_interval=30)
    platform.quota_db_url = url
    platform.start()
    yield platform
    platform.stop()


def add_reviewers(db) -> dict[str, Account]:
    people = {"reviewer": db.scalar(select(Account).where(Account.username == "reviewer"))}
    for username, email in REVIEWERS.items():
        people[username] = account(db, username, email=email, reviewer=True)
    return people


def score(db, reviewer: Account, application: Application, scores: dict[str, int]) -> None:
    review.submit_sheet(db, reviewer, application, scores, now=NOW)


def uploaded_mou(stack: Stack) -> dict:
    """A training proposal with a field-partner MOU uploaded (its record in the proposal, the
    file in the service's store), as the applicant's page keeps one."""
    record, body = application_form.file_record(0, closing.Upload("合作備忘錄.pdf", PDF))
    LocalFileStore(stack.state / "files").save(record["key"], body)
    proposal = sample.training()
    proposal["bonus"]["mou_file"] = record
    return proposal


@pytest.fixture(scope="module")
def world(stack, quota_db) -> dict[str, int]:
    """One application per scenario, at the stage the scenario starts from, made through the
    domain (the applicant's pages are another module's)."""
    with database.transaction(quota_db.factory) as db:
        operator = db.scalar(select(Account).where(Account.username == "operator"))
        people = add_reviewers(db)
        owner = account(db, "company-owner", email="owner@startup.example.tw")
        training = make_round(db, operator, "training")
        inference = make_round(db, operator, "inference")

        def qualified_training(number: str) -> Application:
            return qualified(db, operator, owner, training, business_number=number)

        fresh = submitted(db, owner, training, business_number="22099131")
        scoring = qualified(
            db, operator, owner, training, business_number="04595257", proposal=uploaded_mou(stack)
        )
        recusal = qualified_training("24536806")
        meeting = qualified_training("53212539")
        unassigned = qualified_training("12345675")
        supplement = submitted(db, owner, training, business_number="38602105")
        apps.start_qualification(db, operator, supplement, now=NOW)
        rejected = submitted(db, owner, training, business_number="10458575")
        apps.start_qualification(db, operator, rejected, now=NOW)
        selling = qualified(db, operator, owner, inference, business_number="40028905")
        withdrawing = submitted(db, owner, training, business_number="38602100")

        for application in (scoring, recusal):
            review.assign(db, operator, application, people["reviewer"], now=NOW)
        for name in ("reviewer", "reviewer2", "reviewer3"):
            for application in (meeting, selling):
                review.assign(db, operator, application, people[name], now=NOW)
        # training: 78.25 + 3 bonus items × 2 = 84.25; 70 + 6 = 76; 100 + 6 = 106
        score(db, people["reviewer"], meeting, TRAINING_SCORES)
        score(db, people["reviewer2"], meeting, dict.fromkeys(TRAINING_SCORES, 70))
        score(db, people["reviewer3"], meeting, dict.fromkeys(TRAINING_SCORES, 100))
        # inference: 76.60 + 3 × 2 = 82.60; 60 + 6 = 66; 80 + 6 = 86
        score(db, people["reviewer"], selling, INFERENCE_SCORES)
        score(db, people["reviewer2"], selling, dict.fromkeys(INFERENCE_SCORES, 60))
        score(db, people["reviewer3"], selling, dict.fromkeys(INFERENCE_SCORES, 80))
        return {
            "training_round": training.id,
            "inference_round": inference.id,
            "fresh": fresh.id,
            "scoring": scoring.id,
            "recusal": recusal.id,
            "meeting": meeting.id,
            "unassigned": unassigned.id,
            "supplement": supplement.id,
            "rejected": rejected.id,
            "selling": selling.id,
            "withdrawing": withdrawing.id,
            **{f"account:{name}": person.id for name, person in people.items()},
        }


@pytest.fixture(scope="module")
def operator(stack, world) -> requests.Session:
    return stack.sign_in("operator")


@pytest.fixture(scope="module")
def reviewer(stack, world) -> requests.Session:
    return stack.sign_in("reviewer")


# ---- reading pages, sending forms ----------------------------------------------------------------


def page(browser: requests.Session, stack: Stack, path: str, status: int = 200) -> BeautifulSoup:
    response = browser.get(stack.url(PREFIX + path), timeout=30)
    assert response.status_code == status, (response.status_code, response.text[:3000])
    return BeautifulSoup(response.text, "html.parser")


def service_xsrf(browser: requests.Session, stack: Stack) -> str:
    """The service's XSRF token (its cookie, set by any page), not the hub's (path /hub/)."""
    if not any(c.name == "_xsrf" and c.path != "/hub/" for c in browser.cookies):
        browser.get(stack.url(PREFIX), timeout=30)
    return next(c.value for c in browser.cookies if c.name == "_xsrf" and c.path != "/hub/")


def post(browser, stack, path: str, data: dict | list) -> requests.Response:
    items = list(data.items()) if isinstance(data, dict) else list(data)
    items.append(("_xsrf", service_xsrf(browser, stack)))
    return browser.post(stack.url(PREFIX + path), data=items, allow_redirects=False, timeout=60)


def sent(response: requests.Response, status: int = 400) -> BeautifulSoup:
    assert response.status_code == status, (response.status_code, response.text[:3000])
    return BeautifulSoup(response.text, "html.parser")


def redirected(response: requests.Response, path: str) -> None:
    assert response.status_code == 303, (response.status_code, response.text[:3000])
    assert response.headers["Location"].startswith(PREFIX + path), response.headers["Location"]


def error_at(soup: BeautifulSoup, field_id: str) -> str:
    """The message shown at a field: the field is marked invalid and described by it."""
    field = soup.find(id=field_id)
    assert field is not None, field_id
    assert field.get("aria-invalid") == "true", field
    assert "is-invalid" in field.get("class", []), field
    assert f"{field_id}-error" in field["aria-describedby"].split(), field
    return soup.find(id=f"{field_id}-error").get_text(" ", strip=True)


def value_of(soup: BeautifulSoup, field_id: str) -> str:
    field = soup.find(id=field_id)
    return field.get_text() if field.name == "textarea" else field.get("value", "")


def values_of(soup: BeautifulSoup, *field_ids: str) -> dict[str, str]:
    return {field_id: value_of(soup, field_id) for field_id in field_ids}


def status_of(quota_db: QuotaDB, application_id: int) -> str:
    with quota_db.factory() as db:
        return db.get(Application, application_id).status


def sheets_of(quota_db: QuotaDB, application_id: int) -> int:
    assigned = select(ReviewerAssignment.id).where(
        ReviewerAssignment.application_id == application_id
    )
    return count(quota_db, ScoreSheet, ScoreSheet.assignment_id.in_(assigned))


def count(quota_db: QuotaDB, model, *where) -> int:
    with quota_db.factory() as db:
        return db.scalar(select(func.count()).select_from(model).where(*where))


# ---- permissions ---------------------------------------------------------------------------------


def test_operator_pages_and_posts_are_closed_to_everyone_else(stack, world, quota_db, reviewer):
    app_id = world["meeting"]
    pages = [
        "admin/rounds",
        f"admin/rounds/{world['training_round']}",
        "admin/applications",
        f"admin/applications/{app_id}",
        f"admin/applications/{app_id}/award",
    ]
    applicant = stack.sign_in("applicant")
    for person in (applicant, reviewer):
        for path in pages:
            soup = page(person, stack, path, status=403)
            assert "只有營運管理員可以使用" in soup.find("main").get_text()
        refused = post(person, stack, f"admin/applications/{app_id}/decision", {"tier": "L1"})
        assert refused.status_code == 403
        award = post(person, stack, f"admin/applications/{app_id}/award", {"notice_date": "x"})
        assert award.status_code == 403
        assign = post(
            person,
            stack,
            f"admin/applications/{world['unassigned']}/assign",
            {"reviewer": str(world["account:reviewer"])},
        )
        assert assign.status_code == 403
    assert count(quota_db, Award) == 0
    assert (
        count(
            quota_db, ReviewerAssignment, ReviewerAssignment.application_id == world["unassigned"]
        )
        == 0
    )
    # the reviewers' pages are closed to people who are not reviewers
    assert "只有審查委員可以使用" in page(applicant, stack, "review", status=403).get_text()
    page(applicant, stack, f"review/applications/{world['scoring']}", status=403)


def test_the_operator_admin_page_links_to_the_review_pages(stack, operator):
    nav = page(operator, stack, "admin").find("ul", class_="nav")
    links = {a["href"] for a in nav.find_all("a")}
    assert {PREFIX + "admin/applications", PREFIX + "admin/rounds"} <= links
    # the forms' addresses take a POST only
    page(operator, stack, "admin/applications/1/qualify", status=405)
    page(operator, stack, "review/applications/1/conflict", status=405)


# ---- rounds ----------------------------------------------------------------------------------------


def test_rounds_are_created_in_taipei_time_with_errors_at_their_fields(stack, operator, quota_db):
    typed = {
        "name": "116 年第 1 梯次 推論",
        "category": "inference",
        "opens_day": "2026-12-01",
        "opens_time": "09:00",
        "closes_day": "2027-02-30",
        "closes_time": "25:00",
    }
    soup = sent(post(operator, stack, "admin/rounds", typed))
    assert error_at(soup, "round-closes-day") == "日期格式應為 YYYY-MM-DD"
    assert error_at(soup, "round-closes-time") == "時間格式應為 HH:MM"
    kept = values_of(soup, "round-name", "round-opens-day", "round-opens-time", "round-closes-day")
    assert kept == {
        "round-name": "116 年第 1 梯次 推論",
        "round-opens-day": "2026-12-01",
        "round-opens-time": "09:00",
        "round-closes-day": "2027-02-30",
    }
    assert soup.find(id="round-category").find("option", selected=True)["value"] == "inference"

    before = {**typed, "closes_day": "2026-11-30", "closes_time": ""}
    soup = sent(post(operator, stack, "admin/rounds", before))
    assert error_at(soup, "round-closes-day") == "截止時間應晚於開始時間"

    good = {**typed, "closes_day": "2027-01-15", "closes_time": ""}
    redirected(post(operator, stack, "admin/rounds", good), "admin/rounds")
    # sent again (a double click, back and resubmit): the round exists once
    redirected(post(operator, stack, "admin/rounds", good), "admin/rounds")
    with quota_db.factory() as db:
        rounds = db.scalars(select(Round).where(Round.name == typed["name"])).all()
        assert len(rounds) == 1
        assert taipei(rounds[0].opens_at).isoformat() == "2026-12-01T09:00:00+08:00"
        # a closing day means until 23:59:59 of that day: the exclusive end is midnight after it
        assert rounds[0].closes_at == apps.deadline_after(date(2027, 1, 15))
        round_id = rounds[0].id
    row = page(operator, stack, "admin/rounds").find("tr", attrs={"data-round": str(round_id)})
    assert row.find(class_="closes").get_text() == "2027-01-15 23:59:59"
    assert "2026-12-01 09:00:00" in row.get_text()

    # the same name with other times is another round: refused at the name, input kept
    other = {**good, "closes_time": "18:00"}
    soup = sent(post(operator, stack, "admin/rounds", other))
    assert error_at(soup, "round-name") == "同類別已有同名的梯次"
    assert value_of(soup, "round-closes-time") == "18:00"


# ---- the queue and one application ------------------------------------------------------------------


def test_queue_filters_by_round_category_and_status(stack, operator, world):
    soup = page(
        operator, stack, f"admin/applications?round={world['training_round']}&status=qualification"
    )
    shown = {int(tr["data-application"]) for tr in soup.select("#queue tbody tr[data-application]")}
    assert shown == {world["supplement"], world["rejected"]}
    soup = page(operator, stack, "admin/applications?category=inference")
    shown = {int(tr["data-application"]) for tr in soup.select("#queue tbody tr[data-application]")}
    assert shown == {world["selling"]}
    assert soup.find(id="filter-category").find("option", selected=True)["value"] == "inference"


def test_the_application_page_shows_documents_files_checks_and_history(stack, operator, world):
    soup = page(operator, stack, f"admin/applications/{world['fresh']}")
    main = soup.find("main")
    assert "新創應用有限公司" in soup.find("h1").get_text()
    assert soup.find(attrs={"data-status": True})["data-status"] == "submitted"
    documents = soup.find(id="documents").get_text(" ", strip=True)
    for typed in ("22099131", "lead@startup.example.tw", "0912-345-678", "120,000,000"):
        assert typed in documents
    # choices by their names: the domain healthcare, the registration's kind
    assert "醫療健康" in documents and "人工智慧技術服務機構能量登錄" in documents
    assert "ai_technical_service" not in documents and "healthcare" not in documents
    files = soup.find(id="supporting-files")
    links = {dd["data-path"]: dd for dd in files.find_all("dd")}
    assert links["proposal.bonus.product_material_link"].a["href"] == (
        "https://startup.example.tw/product"
    )
    assert links["proposal.bonus.mou_link"].a is None  # none given
    # the automatic checks with their evidence; no decision yet
    rows = {tr["data-criterion"]: tr for tr in main.select("#criteria tbody tr")}
    assert rows["business_number"].find(class_="automatic")["data-result"] == "pass"
    evidence = rows["business_number"].find(class_="evidence")
    assert "22099131" in evidence.get_text()
    # the evidence's keys are named in the page's language, not as the code spells them
    assert [dt.get_text() for dt in evidence.find_all("dt")] == ["統一編號", "規則"]
    assert rows["registered_in_taiwan"].find(class_="automatic")["data-result"] == ""
    assert rows["startup_priority"].find(class_="automatic")["data-result"] == "flag"
    assert "2019-05-01" in rows["startup_priority"].find(class_="evidence").get_text()
    history = soup.find(id="history").find("tbody").find_all("tr")
    assert len(history) == 1 and "2026-09-15 10:00:00" in history[0].get_text()


def test_the_operator_withdraws_an_application_with_a_reason(stack, operator, world, quota_db):
    app_id = world["withdrawing"]
    path = f"admin/applications/{app_id}/withdraw"
    soup = sent(post(operator, stack, path, {"reason": ""}))
    assert error_at(soup, "withdraw-reason") == "此欄位必填"
    assert status_of(quota_db, app_id) == "submitted"
    reviewer = stack.sign_in("reviewer")
    assert post(reviewer, stack, path, {"reason": "公司來函撤回"}).status_code == 403
    redirected(
        post(operator, stack, path, {"reason": "公司來函撤回"}), f"admin/applications/{app_id}"
    )
    redirected(
        post(operator, stack, path, {"reason": "公司來函撤回"}), f"admin/applications/{app_id}"
    )
    assert status_of(quota_db, app_id) == "withdrawn"
    soup = page(operator, stack, f"admin/applications/{app_id}?done=withdraw")
    assert soup.find(id="withdraw-form") is None  # nothing left to withdraw
    assert "公司來函撤回" in soup.find(id="history").get_text()
    with quota_db.factory() as db:
        changes = db.scalars(
            select(ApplicationStatusChange).where(ApplicationStatusChange.application_id == app_id)
        ).all()
    assert [c.new_status for c in changes][-1:] == ["withdrawn"]
    assert sum(c.new_status == "withdrawn" for c in changes) == 1


def test_qualification_review_criteria_and_qualify_once(stack, operator, world, quota_db):
    app_id = world["fresh"]
    redirected(post(operator, stack, f"admin/applications/{app_id}/qualification", {}), "admin/")
    redirected(post(operator, stack, f"admin/applications/{app_id}/qualification", {}), "admin/")
    assert status_of(quota_db, app_id) == "qualification"

    # no verdict: at the verdict; a fail needs a note: at the note, the criterion's form only
    soup = sent(post(operator, stack, f"admin/applications/{app_id}/criterion",
                     {"criterion": "not_china_invested", "note": "看起來沒問題"}))  # fmt: skip
    error = soup.find(id="criterion-not_china_invested-passed-error").get_text(strip=True)
    assert error == "請選擇通過或未通過"
    assert value_of(soup, "criterion-not_china_invested-note") == "看起來沒問題"
    assert soup.find(id="criterion-consent-passed-error") is None
    soup = sent(post(operator, stack, f"admin/applications/{app_id}/criterion",
                     {"criterion": "not_china_invested", "passed": "fail", "note": ""}))  # fmt: skip
    assert error_at(soup, "criterion-not_china_invested-note") == "此欄位必填"
    assert soup.find(id="criterion-not_china_invested-fail").has_attr("checked")

    # qualify with criteria undecided: refused with the list, on the qualify form
    soup = sent(post(operator, stack, f"admin/applications/{app_id}/qualify", {}))
    assert "尚有未通過或未判定的項目" in soup.find(id="qualify-form").get_text()
    for criterion in apps.CRITERIA:
        response = post(
            operator,
            stack,
            f"admin/applications/{app_id}/criterion",
            {"criterion": criterion, "passed": "pass", "note": ""},
        )
        redirected(response, f"admin/applications/{app_id}")
    soup = page(operator, stack, f"admin/applications/{app_id}?done=criterion")
    assert soup.find(id="done").get_text(strip=True) == "已記錄審查項目。"
    assert len(soup.select('#criteria .decision [data-passed="true"]')) == len(apps.CRITERIA)
    redirected(post(operator, stack, f"admin/applications/{app_id}/qualify", {}), "admin/")
    redirected(post(operator, stack, f"admin/applications/{app_id}/qualify", {}), "admin/")
    assert status_of(quota_db, app_id) == "professional_review"
    with quota_db.factory() as db:
        changes = db.scalars(
            select(ApplicationStatusChange.new_status)
            .where(ApplicationStatusChange.application_id == app_id)
            .order_by(ApplicationStatusChange.id)
        ).all()
    assert changes == ["submitted", "qualification", "professional_review"]


def test_supplement_request_keeps_the_input_and_is_made_once(stack, operator, world, quota_db):
    app_id = world["supplement"]
    yesterday = taipei(utcnow()).date() - timedelta(days=1)
    typed = [("other_fields", ""), ("message", "請補上設立日期的證明"), ("due_day", str(yesterday))]
    soup = sent(post(operator, stack, f"admin/applications/{app_id}/supplement", typed))
    assert soup.find(id="supplement-fields-error").get_text(strip=True) == "請勾選要補正的欄位"
    assert error_at(soup, "supplement-due-day") == "補件期限應在今天或以後"
    assert value_of(soup, "supplement-message") == "請補上設立日期的證明"
    assert value_of(soup, "supplement-due-day") == str(yesterday)

    due = taipei(utcnow()).date() + timedelta(days=7)
    good = [
        ("fields", "company.founding_date"),
        ("fields", "proposal.dataset"),
        ("other_fields", ""),
        ("message", "請補上設立日期的證明"),
        ("due_day", str(due)),
    ]
    redirected(post(operator, stack, f"admin/applications/{app_id}/supplement", good), "admin/")
    redirected(post(operator, stack, f"admin/applications/{app_id}/supplement", good), "admin/")
    assert status_of(quota_db, app_id) == "supplement_requested"
    where = SupplementRequest.application_id == app_id
    assert count(quota_db, SupplementRequest, where) == 1
    assert count(quota_db, Notice, Notice.application_id == app_id) == 1
    soup = page(operator, stack, f"admin/applications/{app_id}")
    shown = soup.find(id="open-supplement")
    assert [c.get_text() for c in shown.find_all("code")] == [
        "company.founding_date",
        "proposal.dataset",
    ]
    assert shown.find(class_="due").get_text() == f"{due} 23:59:59"


def test_reject_needs_a_failed_criterion_and_a_reason(stack, operator, world, quota_db):
    app_id = world["rejected"]
    soup = sent(post(operator, stack, f"admin/applications/{app_id}/reject", {"reason": "不符"}))
    assert "請先記錄未通過的審查項目" in soup.find(id="reject-form").get_text()
    assert value_of(soup, "reject-reason") == "不符"
    redirected(post(operator, stack, f"admin/applications/{app_id}/criterion",
                    {"criterion": "industry_codes", "passed": "fail", "note": "行業代碼不符"}),
               "admin/")  # fmt: skip
    soup = sent(post(operator, stack, f"admin/applications/{app_id}/reject", {"reason": " "}))
    assert error_at(soup, "reject-reason") == "此欄位必填"
    reason = "行業代碼不在 J582、J62、J63、K6699 之列"
    redirected(
        post(operator, stack, f"admin/applications/{app_id}/reject", {"reason": reason}), "admin/"
    )
    assert status_of(quota_db, app_id) == "rejected"


# ---- reviewers' assignment ----------------------------------------------------------------------


def test_assignment_refuses_a_conflict_at_that_reviewer_and_assigns_once(
    stack, operator, world, quota_db
):
    app_id = world["unassigned"]
    insider, second, third = (world[f"account:{n}"] for n in ("insider", "reviewer2", "reviewer3"))
    soup = page(operator, stack, f"admin/applications/{app_id}")
    shown = soup.find(attrs={"data-candidate": "insider"}).find(class_="conflict").get_text()
    assert "e-mail domain startup.example.tw" in shown

    chosen = [("reviewer", str(insider)), ("reviewer", str(second))]
    soup = sent(post(operator, stack, f"admin/applications/{app_id}/assign", chosen))
    assert error_at(soup, f"assign-{insider}") == "利益迴避：e-mail domain startup.example.tw"
    assert soup.find(id=f"assign-{second}").has_attr("checked")  # the ticks are kept
    where = ReviewerAssignment.application_id == app_id
    assert count(quota_db, ReviewerAssignment, where) == 0  # all or nothing

    chosen = [("reviewer", str(second)), ("reviewer", str(third))]
    redirected(post(operator, stack, f"admin/applications/{app_id}/assign", chosen), "admin/")
    redirected(post(operator, stack, f"admin/applications/{app_id}/assign", chosen), "admin/")
    assert count(quota_db, ReviewerAssignment, where) == 2
    rows = page(operator, stack, f"admin/applications/{app_id}").select("#assignments tbody tr")
    assert [tr["data-reviewer"] for tr in rows] == ["reviewer2", "reviewer3"]


# ---- reviewers' pages --------------------------------------------------------------------------


def test_reviewer_sees_assignments_and_only_those(stack, reviewer, world):
    soup = page(reviewer, stack, "review")
    listed = {int(tr["data-application"]) for tr in soup.select("#assignments tbody tr")}
    assert {world["scoring"], world["recusal"], world["meeting"], world["selling"]} <= listed
    assert world["unassigned"] not in listed
    refused = page(reviewer, stack, f"review/applications/{world['unassigned']}", status=403)
    assert "找不到申請案或無權查看" in refused.get_text()
    # the operator's view of the same is closed to a reviewer
    page(reviewer, stack, f"admin/applications/{world['scoring']}", status=403)


def test_score_sheet_shows_weights_and_bonus_and_keeps_input_on_errors(
    stack, reviewer, world, quota_db
):
    app_id = world["scoring"]
    soup = page(reviewer, stack, f"review/applications/{app_id}")
    weights = {tr["data-criterion"]: tr.find(class_="weight").get_text() for tr in
               soup.select("#sheet-form tbody tr")}  # fmt: skip
    assert weights == {
        "importance": "30%",
        "industry_application": "15%",
        "dataset": "10%",
        "model_resources": "20%",
        "benefit": "15%",
        "productisation": "10%",
    }
    bonus = {
        li["data-bonus"]: li["data-counts"] for li in soup.select("#bonus-items li[data-bonus]")
    }
    assert bonus == {"open_model": "true", "open_dataset": "true", "registrations": "true"}
    links = soup.find(id="supporting-files").get_text()
    assert "https://huggingface.co/startup/clinic-llama" in links
    # the uploaded MOU: a download for the assigned reviewer, not for another reviewer
    mou = soup.select_one('#supporting-files dd[data-path="proposal.bonus.mou_file"] a')
    assert mou.get_text() == "合作備忘錄.pdf"
    assert mou["href"] == f"{PREFIX}applications/{app_id}/files/mou"
    download = reviewer.get(stack.url(mou["href"]), timeout=30)
    assert download.status_code == 200 and download.content == PDF
    other = stack.sign_in("reviewer2")
    assert other.get(stack.url(mou["href"]), timeout=30).status_code == 404
    assert "門診問答" in soup.find(id="documents").get_text()
    assert soup.find(id="criteria") is None  # the qualification review is the operator's

    typed = {f"score_{k}": str(v) for k, v in TRAINING_SCORES.items()}
    typed |= {"score_importance": "101", "score_dataset": "abc"}
    typed |= {"comment_to_applicant": "資料集描述清楚", "private_comment": "預算偏高"}
    soup = sent(post(reviewer, stack, f"review/applications/{app_id}", typed))
    assert error_at(soup, "score-importance") == "請填 0 到 100 的整數"
    assert error_at(soup, "score-dataset") == "請填 0 到 100 的整數"
    kept = values_of(soup, *(f"score-{name}" for name in TRAINING_SCORES))
    assert kept == {f"score-{k}": str(v) for k, v in TRAINING_SCORES.items()} | {
        "score-importance": "101",
        "score-dataset": "abc",
    }
    assert values_of(soup, "comment-to-applicant", "private-comment") == {
        "comment-to-applicant": "資料集描述清楚",
        "private-comment": "預算偏高",
    }
    assert soup.find(id="score-benefit").get("aria-invalid") is None
    assert sheets_of(quota_db, app_id) == 0  # nothing saved

    typed |= {"score_importance": "80", "score_dataset": "60"}
    done = f"review/applications/{app_id}?saved=1"
    redirected(post(reviewer, stack, f"review/applications/{app_id}", typed), done)
    redirected(post(reviewer, stack, f"review/applications/{app_id}", typed), done)
    soup = page(reviewer, stack, done)
    # computed by the service: 78.25 for the criteria, 3 bonus items × 2 points
    assert soup.find(id="total").get_text() == "84.25"
    assert soup.find(id="weighted").get_text() == "78.25"
    assert soup.find(id="bonus").get_text() == "6.00"
    assert value_of(soup, "score-importance") == "80"  # the saved sheet fills the form
    assert sheets_of(quota_db, app_id) == 1
    with quota_db.factory() as db:
        sheet = db.scalar(select(ScoreSheet).order_by(ScoreSheet.id.desc()))
        assert sheet.total_hundredths == 8425 and sheet.private_comment == "預算偏高"
    mine = page(reviewer, stack, "review").find("tr", attrs={"data-application": str(app_id)})
    assert "84.25" in mine.find(class_="sheet").get_text()
    # an error on the other form of the page keeps the saved sheet in its form
    soup = sent(post(reviewer, stack, f"review/applications/{app_id}/conflict", {"reason": " "}))
    assert error_at(soup, "conflict-reason") == "此欄位必填"
    assert value_of(soup, "score-importance") == "80"
    assert value_of(soup, "private-comment") == "預算偏高"


def test_declared_conflict_recuses_and_closes_the_application(
    stack, reviewer, operator, world, quota_db
):
    app_id = world["recusal"]
    soup = sent(post(reviewer, stack, f"review/applications/{app_id}/conflict", {"reason": ""}))
    assert error_at(soup, "conflict-reason") == "此欄位必填"
    reason = "我曾擔任該公司顧問"
    done = f"review?recused={app_id}"
    conflict = f"review/applications/{app_id}/conflict"
    redirected(post(reviewer, stack, conflict, {"reason": reason}), done)
    redirected(post(reviewer, stack, conflict, {"reason": reason}), done)  # sent again: once
    soup = page(reviewer, stack, done)
    assert soup.find(id="done") is not None
    row = soup.find("tr", attrs={"data-application": str(app_id)})
    assert row.find("a") is None and "已迴避" in row.find(class_="sheet").get_text()
    refused = page(reviewer, stack, f"review/applications/{app_id}", status=403)
    assert "找不到申請案或無權查看" in refused.get_text()
    scores = {f"score_{k}": str(v) for k, v in TRAINING_SCORES.items()}
    assert post(reviewer, stack, f"review/applications/{app_id}", scores).status_code == 403
    # the operator sees the recusal with its reason
    recusal = page(operator, stack, f"admin/applications/{app_id}").select_one(
        '#assignments tr[data-reviewer="reviewer"] .recusal'
    )
    assert reason in recusal.get_text()


# ---- ranking, decisions, award -----------------------------------------------------------------


def test_training_meeting_records_the_decision_and_the_award_grants_points_once(
    stack, operator, world, quota_db
):
    app_id = world["meeting"]
    soup = page(operator, stack, f"admin/rounds/{world['training_round']}")
    assert "審查會議" in soup.find("h1").get_text()
    row = soup.find(id=f"application-{app_id}")
    assert row.find(class_="mean").get_text() == "88.75"  # (84.25 + 76 + 106) / 3
    assert row.find(class_="flag") is not None  # 106 − 76 = 30 > 20

    decision = f"admin/applications/{app_id}/decision"
    typed = {"decision": "selected", "tier": "", "note": "會議決議入選"}
    soup = sent(post(operator, stack, decision, typed))
    assert error_at(soup, f"decision-{app_id}-tier") == "請選擇級別 L1、L2 或 L3"
    assert value_of(soup, f"decision-{app_id}-note") == "會議決議入選"
    assert soup.find(id=f"decision-{app_id}-selected").has_attr("checked")
    redirected(post(operator, stack, decision, {**typed, "tier": "L2"}), "admin/rounds/")
    redirected(post(operator, stack, decision, {**typed, "tier": "L2"}), "admin/rounds/")
    assert status_of(quota_db, app_id) == "selected"

    soup = page(operator, stack, f"admin/applications/{app_id}/award")
    assert soup.find(id="award-points").get_text() == "2000"
    award = f"admin/applications/{app_id}/award"
    typed = {
        "notice_date": "2026-12-01",
        "networks": "203.0.113.7\n10.0.0.300\n198.51.100.1/24",
        "trainees": "trainee.one@startup.example.tw\nnot-an-address",
    }
    soup = sent(post(operator, stack, award, typed))
    assert (
        error_at(soup, "award-networks") == "IP 位址或網段格式不正確：10.0.0.300, 198.51.100.1/24"
    )
    assert error_at(soup, "award-trainees") == "電子郵件格式不正確：not-an-address"
    assert value_of(soup, "award-networks") == typed["networks"]
    assert value_of(soup, "award-notice-date") == "2026-12-01"
    assert count(quota_db, Award) == 0

    typed |= {
        "networks": "203.0.113.7\n2001:db8:1::/48",
        "trainees": "trainee.one@startup.example.tw",
    }
    redirected(post(operator, stack, award, typed), f"admin/applications/{app_id}")
    redirected(post(operator, stack, award, typed), f"admin/applications/{app_id}")  # twice
    with quota_db.factory() as db:
        awarded = db.scalars(select(Award).where(Award.application_id == app_id)).all()
        assert len(awarded) == 1
        project_id = awarded[0].project_id
        assert ledger.balance(db, project_id) == 2_000 * 1000  # granted once
        roles = db.scalars(select(Membership.role).where(Membership.project_id == project_id)).all()
        assert sorted(roles) == ["contact", "lead", "trainee"]
        assert awarded[0].window_start.astimezone(TAIPEI).isoformat() == (
            "2026-12-01T00:00:00+08:00"
        )
    soup = page(operator, stack, f"admin/applications/{app_id}?done=award")
    assert soup.find(id="done") is not None
    assert soup.find(id="award-window").get_text() == "2026-12-01 00:00:00 → 2027-02-28 23:59:59"
    assert value_of(soup, "award-networks") == "203.0.113.7/32\n2001:db8:1::/48"

    # the trusted addresses can change later; a bad one comes back at the field
    networks = f"admin/applications/{app_id}/networks"
    soup = sent(post(operator, stack, networks, {"networks": "203.0.113.0/33"}))
    assert error_at(soup, "award-networks") == "IP 位址或網段格式不正確：203.0.113.0/33"
    assert value_of(soup, "award-networks") == "203.0.113.0/33"
    redirected(post(operator, stack, networks, {"networks": "198.51.100.0/24"}), "admin/")
    with quota_db.factory() as db:
        assert db.scalar(select(Award.trusted_networks).where(Award.application_id == app_id)) == (
            '["198.51.100.0/24"]'
        )


def test_inference_pass_mark_award_shows_the_key_once_and_revokes_it(
    stack, operator, world, quota_db
):
    app_id = world["selling"]
    soup = page(operator, stack, f"admin/rounds/{world['inference_round']}")
    assert soup.find(id="pass-mark").get_text() == "70"
    row = soup.find(id=f"application-{app_id}")
    assert row.find(class_="mean").get_text() == "78.20"  # (82.60 + 66 + 86) / 3
    assert row.select_one(".result [data-passes]")["data-passes"] == "true"
    decision = f"admin/applications/{app_id}/decision"
    soup = sent(post(operator, stack, decision, {"tier": "L4"}))
    assert error_at(soup, f"decision-{app_id}-tier") == "請選擇級別 L1、L2 或 L3"
    redirected(post(operator, stack, decision, {"tier": "L1"}), "admin/rounds/")
    assert status_of(quota_db, app_id) == "selected"

    award = f"admin/applications/{app_id}/award"
    shown = post(operator, stack, award, {"notice_date": "2026-12-01", "trainees": ""})
    soup = sent(shown, status=200)
    assert shown.headers["Cache-Control"] == "no-store"
    key = soup.find(id="api-key").get_text()
    assert key.startswith("aip_") and len(key) == 4 + 43
    redirected(post(operator, stack, award, {"notice_date": "2026-12-01"}), "admin/")
    with quota_db.factory() as db:
        keys = db.scalars(select(ApiKey)).all()
        assert [k.key_hash for k in keys] == [hash_key(key)]  # one key, stored as its hash
        project_id = db.scalar(select(Award.project_id).where(Award.application_id == app_id))
        assert ledger.balance(db, project_id) == 1000 * 1000
    soup = page(operator, stack, f"admin/applications/{app_id}")
    assert key not in soup.get_text() and soup.find(id="api-key-prefix")["data-prefix"] == key[:12]

    redirected(post(operator, stack, f"admin/applications/{app_id}/revoke-key", {}), "admin/")
    with quota_db.factory() as db:
        assert db.scalar(select(ApiKey.revoked_by)) == "operator"
    soup = page(operator, stack, f"admin/applications/{app_id}?done=revoke-key")
    assert soup.find(id="revoke-form") is None


# ---- language ------------------------------------------------------------------------------------


def test_review_pages_switch_to_english(stack, reviewer, operator, world):
    soup = page(operator, stack, "admin/rounds")
    assert soup.find("h1").get_text() == "梯次"
    soup = page(operator, stack, f"admin/applications/{world['unassigned']}?lang=en")
    assert soup.find("html")["lang"] == "en"
    assert (
        soup.find(id="professional-review-title").get_text() == "Professional review and reviewers"
    )
    assert soup.find(attrs={"data-status": True}).get_text() == "Professional review"
    number = soup.select_one('#documents dd[data-path="company.business_number"]')
    assert number.get_text() == "12345675"
    assert number.find_previous_sibling("dt").get_text() == "Unified business number"
    # remembered by the service's cookie; the reviewer's own choice is theirs
    assert page(operator, stack, "admin/rounds").find("h1").get_text() == "Rounds"
    soup = page(reviewer, stack, f"review/applications/{world['scoring']}?lang=en")
    label = soup.find("label", attrs={"for": "score-importance"}).get_text()
    assert label == "importance"
    assert "Save and submit the sheet" in soup.find(id="sheet-form").get_text()
    page(operator, stack, "admin/rounds?lang=zh_TW")
