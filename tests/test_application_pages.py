"""The applicant's pages through the real stack (hub, proxy, OIDC provider, quota service) on
SQLite and on PostgreSQL: people signed in over HTTP post the form as a browser would (the
controls read from the page itself). The domain's rules are tested in test_applications,
test_review and test_awards; here: what the pages show, keep and refuse.

What operators and reviewers do is arranged through the domain modules on the stack's
database (their pages are another module's); the clock is the server's, so rounds and
deadlines are placed around now."""

from __future__ import annotations

import hashlib
import json
import re
import time
from contextlib import contextmanager
from datetime import timedelta
from html.parser import HTMLParser
from urllib.parse import urlparse

import pytest
from sqlalchemy import func, select

from hub_config.seed import seed_demo
from quota_service import applications as apps
from quota_service import awards, review
from quota_service import db as database
from quota_service.models import (
    Account,
    ApiKey,
    Application,
    ApplicationStatus,
    ApplicationStatusChange,
    AuditEvent,
    Award,
    Membership,
    Round,
    SupplementRequest,
)
from quota_service.timewindow import last_second, taipei, utcnow
from tests import application_samples as sample
from tests.conftest import BACKENDS, at
from tests.platform import QuotaDB, wait_for
from tests.stack import Stack
from tests.test_closing import PDF, office
from tests.test_review import INFERENCE_SCORES

pytestmark = pytest.mark.e2e
S = ApplicationStatus
MAX_MB = 1  # AIPOWER_APPLICATION_MAX_MB
MOU, MATERIAL = "proposal.bonus.mou_file", "proposal.bonus.product_material_file"
NOT_YOURS = "找不到申請案或無權查看"


@pytest.fixture(scope="module", params=BACKENDS)
def stack(request, tmp_path_factory):
    state = tmp_path_factory.mktemp(f"apply-{request.param}")
    url = f"sqlite:///{state / 'quota.sqlite'}"
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_server").create_database(
            f"apply_{int(time.time())}"
        )
    platform = Stack(
        state,
        quota_db_url=url,
        metering_interval=30,
        extra_env={"AIPOWER_APPLICATION_MAX_MB": str(MAX_MB)},
    )
    platform.start()
    yield platform
    platform.stop()


@pytest.fixture(scope="module")
def quota(stack):
    db = QuotaDB(stack.quota_db_url)
    yield db
    db.close()


# ---- a browser's view of a form --------------------------------------------------------


class BrowserForm(HTMLParser):
    """The controls of one form of a page, and what a browser sends once they are filled in:
    text as typed, ticked boxes, selected options; disabled controls are not sent."""

    def __init__(self, html: str, form_id: str):
        super().__init__()
        self.form_id, self.inside, self.controls = form_id, False, []
        self.textarea = self.select = None
        self.feed(html)
        assert self.controls, f"no form {form_id} on the page"

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.inside = a.get("id") == self.form_id
        elif self.inside and tag in ("input", "textarea", "select"):
            control = {
                "tag": tag,
                "type": a.get("type", "text") if tag == "input" else tag,
                "name": a.get("name"),
                "value": a.get("value") or "",
                "checked": "checked" in a,
                "disabled": "disabled" in a,
            }
            self.controls.append(control)
            self.textarea = control if tag == "textarea" else None
            self.select = control if tag == "select" else None
        elif self.inside and tag == "option" and "selected" in a:
            self.select["value"] = a.get("value") or ""

    def handle_endtag(self, tag):
        if tag == "form":
            self.inside = False
        elif tag in ("textarea", "select"):
            self.textarea = self.select = None

    def handle_data(self, data):
        if self.textarea is not None:
            self.textarea["value"] += data

    def control(self, name: str) -> dict:
        return next(c for c in self.controls if c["name"] == name)

    def filled(self, values: dict) -> list[tuple[str, str]]:
        sent = []
        for c in self.controls:
            name, value = c["name"], values.get(c["name"], c)
            if not name or c["disabled"] or c["type"] == "file":
                continue
            if c["type"] == "checkbox":
                ticked = (
                    c["checked"]
                    if value is c
                    else (c["value"] in value if isinstance(value, list) else bool(value))
                )
                if ticked:
                    sent.append((name, c["value"]))
            else:
                text = c["value"] if value is c else value
                sent.append((name, "\n".join(text) if isinstance(text, list) else str(text)))
        return sent


def flatten(docs: dict, prefix: str = "") -> dict:
    """Documents as the form's control names: ``company.lead.email``, a registration's
    ``proposal.bonus.registrations.0.kind``."""
    names = {}
    for key, value in docs.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            names |= flatten(value, name + ".")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, row in enumerate(value):
                names |= flatten(row, f"{name}.{i}.")
        else:
            names[name] = value
    return names


def documents(business_number: str, category: str = "training", **company) -> dict:
    proposal = sample.training() if category == "training" else sample.inference()
    return {
        "company": sample.company(business_number, **company),
        "consent": sample.CONSENT,
        "declarations": sample.DECLARATIONS,
        "proposal": proposal,
    }


NO_FILE = ("", b"", "application/octet-stream")  # what a browser sends for an empty file box


def filled_in(stack, browser, application_id, values, action="save", files=None) -> dict:
    """What a browser posts after the application's page was opened, its form filled in
    with ``values`` (by control name), ``files`` chosen, and the button of ``action`` pressed."""
    url = stack.url(f"/services/quota/applications/{application_id}")
    page = BrowserForm(browser.get(url, timeout=30).text, "application-form")
    return {
        "url": url,
        "data": page.filled(values) + [("action", action)],
        "files": {MOU: NO_FILE, MATERIAL: NO_FILE} | (files or {}),
    }


def send(stack, browser, application_id, values, action="save", files=None):
    request = filled_in(stack, browser, application_id, values, action, files)
    return browser.post(**request, allow_redirects=False, timeout=60)


def xsrf(html: str) -> str:
    return re.search(r'name="_xsrf" value="([^"]+)"', html).group(1)


def start(stack, browser, round_id: int) -> int:
    """Start an application from the list page; its id."""
    url = stack.url("/services/quota/applications")
    token = xsrf(browser.get(url, timeout=30).text)
    response = browser.post(
        url, data={"_xsrf": token, "round": str(round_id)}, allow_redirects=False, timeout=30
    )
    assert response.status_code == 303, response.text[:1000]
    return int(urlparse(response.headers["Location"]).path.rsplit("/", 1)[1])


def field_message(html: str, path: str) -> str:
    """The text of the message shown at a field."""
    match = re.search(rf'data-field="{re.escape(path)}">(.*?)</div>', html, re.S)
    assert match, f"no message at {path}"
    return match.group(1).strip()


# ---- arranging what others do, through the domain --------------------------------------


class World:
    def __init__(self, quota: QuotaDB):
        self.quota = quota

    def transaction(self):
        return database.transaction(self.quota.factory)

    @staticmethod
    def person(db, username: str) -> Account:
        return db.scalar(select(Account).where(Account.username == username))

    def open_round(self, category: str = "training", **times) -> int:
        now = utcnow()
        with self.transaction() as db:
            round_ = apps.create_round(
                db,
                self.person(db, "operator"),
                name=f"測試梯次 {category} {now.timestamp()}",
                category=category,
                opens_at=times.get("opens_at", now - timedelta(days=1)),
                closes_at=times.get("closes_at", now + timedelta(days=30)),
                now=now,
            )
            return round_.id

    def application(self, application_id: int) -> Application:
        with self.quota.factory() as db:
            return db.get(Application, application_id)

    def history(self, application_id: int) -> list[tuple[str, str]]:
        with self.quota.factory() as db:
            rows = db.scalars(
                select(ApplicationStatusChange)
                .where(ApplicationStatusChange.application_id == application_id)
                .order_by(ApplicationStatusChange.id)
            )
            return [(r.old_status, r.new_status) for r in rows]

    @contextmanager
    def operating(self, application_id: int):
        """The operator at work on the application, in one transaction."""
        with self.transaction() as db:
            yield db, self.person(db, "operator"), db.get(Application, application_id)


@pytest.fixture(scope="module")
def world(quota):
    return World(quota)


def submitted(stack, world, username: str, business_number: str, category="training"):
    """A person signed in who filled in and submitted an application; (browser, id)."""
    browser = stack.sign_in(username)
    application_id = start(stack, browser, world.open_round(category))
    response = send(
        stack, browser, application_id, flatten(documents(business_number, category)), "submit"
    )
    assert response.status_code == 303, response.text[:3000]
    return browser, application_id


# ---- the list and a new application ---------------------------------------------------------


def test_the_list_offers_only_the_rounds_accepting_now(stack, world):
    now = utcnow()
    open_id = world.open_round("inference")
    closed_id = world.open_round(closes_at=now - timedelta(seconds=1))
    future_id = world.open_round(opens_at=now + timedelta(hours=1))
    browser = stack.sign_in("lister")
    html = browser.get(stack.url("/services/quota/applications"), timeout=30).text
    assert "你還沒有申請案。" in html
    assert f'id="round-{open_id}" value="{open_id}"' in html
    assert f'id="round-{closed_id}"' not in html and f'id="round-{future_id}"' not in html
    with world.quota.factory() as db:
        closes = db.get(Round, open_id).closes_at
    last = taipei(last_second(closes)).strftime("%Y-%m-%d %H:%M:%S")
    assert f"模型推論類 · 受理至 {last}（台北時間）" in html


def test_starting_twice_opens_the_same_draft(stack, world):
    browser = stack.sign_in("twice")
    round_id = world.open_round()
    first, second = start(stack, browser, round_id), start(stack, browser, round_id)
    assert first == second
    with world.quota.factory() as db:
        mine = db.scalars(
            select(Application).join(Account).where(Account.username == "twice")
        ).all()
    assert [a.id for a in mine] == [first]
    listing = browser.get(stack.url("/services/quota/applications"), timeout=30).text
    assert re.search(rf'data-application="{first}">.*?<td class="status">草稿</td>', listing, re.S)


def test_a_closed_round_refuses_a_start_with_the_reason(stack, world):
    now = utcnow()
    closes = now - timedelta(seconds=1)
    round_id = world.open_round(closes_at=closes)
    browser = stack.sign_in("latecomer")
    token = xsrf(browser.get(stack.url("/services/quota/applications")).text)
    response = browser.post(
        stack.url("/services/quota/applications"),
        data={"_xsrf": token, "round": str(round_id)},
        allow_redirects=False,
    )
    assert response.status_code == 409
    last = taipei(closes - timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S")
    assert field_message(response.text, "round") == f"本梯次已於 {last}（台北時間）截止"
    nothing = browser.post(
        stack.url("/services/quota/applications"), data={"_xsrf": token}, allow_redirects=False
    )
    assert nothing.status_code == 400
    assert field_message(nothing.text, "round") == "請選擇梯次與類別"


# ---- the form: draft, submit ---------------------------------------------------------------


def test_a_draft_keeps_wrong_values_and_shows_what_is_missing_as_hints(stack, world):
    browser = stack.sign_in("drafter")
    application_id = start(stack, browser, world.open_round())
    blank = browser.get(stack.url(f"/services/quota/applications/{application_id}")).text
    assert 'id="hint-summary"' not in blank  # nothing typed yet: nothing to point at
    typed = {
        "company.name": "草稿公司",
        "company.business_number": "12345678",
        "company.founding_date": "2019/13/01",
        "company.industry_codes": ["J63"],
        "proposal.dataset.image_count": "2,400",
    }
    response = send(stack, browser, application_id, typed)
    assert response.status_code == 303
    assert response.headers["Location"].endswith(f"/applications/{application_id}?saved=1")
    html = browser.get(stack.url(response.headers["Location"])).text
    assert 'id="notice">草稿已儲存。' in html
    assert 'name="company.business_number" value="12345678"' in html
    assert 'name="company.founding_date" value="2019/13/01"' in html
    assert 'name="company.industry_codes" value="J63" checked' in html
    assert 'name="company.industry_codes" value="J62">' in html
    assert field_message(html, "company.business_number") == "待補齊： 統一編號檢查碼不符"
    assert field_message(html, "company.founding_date") == "待補齊： 日期格式應為 YYYY-MM-DD"
    assert "is-invalid" not in html  # hints, not errors
    hints = re.search(r'id="hint-summary">\s*<summary>送出前尚有 (\d+) 個欄位', html)
    assert hints and int(hints.group(1)) > 30
    stored = apps.documents(world.application(application_id))
    assert stored["company"]["business_number"] == "12345678"
    assert stored["company"]["founding_date"] == "2019/13/01"
    assert stored["proposal"]["dataset"]["image_count"] == "2,400"
    assert world.application(application_id).status == S.DRAFT


def test_submit_shows_each_error_at_its_field_and_keeps_what_was_typed(stack, world):
    browser = stack.sign_in("hasty")
    application_id = start(stack, browser, world.open_round())
    values = flatten(documents("10000004", lead={**sample.company()["lead"], "phone": "12345"}))
    values["consent.personal_data"] = False
    values["proposal.bonus.registrations.0.number"] = ""
    response = send(stack, browser, application_id, values, "submit")
    assert response.status_code == 400
    html = response.text
    summary = re.search(r'id="error-summary".*?</div>', html, re.S).group(0)
    links = re.findall(r'<a href="#([^"]+)">', summary)
    assert links == [
        "f-company-lead-phone",
        "f-consent-personal_data",
        "f-proposal-bonus-registrations-0-number",
    ]
    assert "專案主持人 · 連絡電話: 電話應為含區碼的市話" in summary
    assert field_message(html, "company.lead.phone").startswith("電話應為含區碼的市話")
    assert re.search(
        r'class="form-control is-invalid" id="f-company-lead-phone" name="company.lead.phone" '
        r'value="12345" inputmode="tel" autocomplete="tel" aria-describedby="'
        r'f-company-lead-phone-hint f-company-lead-phone-msg" aria-invalid="true"',
        html,
    )
    assert field_message(html, "proposal.bonus.registrations.0.number") == "請填登錄字號"
    # everything else comes back as typed
    form = BrowserForm(html, "application-form")
    assert form.control("company.name")["value"] == "新創應用有限公司"
    assert form.control("proposal.dataset.text_tokens")["value"] == "120,000,000"
    assert form.control("proposal.no_code_models")["value"] == "TAIDE"
    assert form.control("proposal.bonus.registrations.0.kind")["value"] == "ai_technical_service"
    assert form.control("consent.personal_data")["checked"] is False
    assert world.application(application_id).status == S.DRAFT
    assert world.history(application_id) == []


def test_a_double_submit_submits_once(stack, world):
    browser = stack.sign_in("doubler")
    application_id = start(stack, browser, world.open_round())
    request = filled_in(stack, browser, application_id, flatten(documents("10000009")), "submit")
    first = browser.post(**request, allow_redirects=False)
    assert first.headers["Location"].endswith(f"/applications/{application_id}?submitted=1")
    html = browser.get(stack.url(first.headers["Location"])).text
    assert 'data-status="submitted">已送出' in html and "申請案已送出" in html
    # the same request once more (a double click, or back and resubmit)
    again = browser.post(**request, allow_redirects=False)
    assert again.status_code == 303
    assert again.headers["Location"].endswith(f"/applications/{application_id}")
    assert world.history(application_id) == [("draft", "submitted")]
    with world.quota.factory() as db:
        audited = db.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(
                AuditEvent.action == "application.status",
                AuditEvent.subject_id == str(application_id),
            )
        )
    assert audited == 1
    # submitted: the documents are shown, but nothing in them can be changed
    shown = html.split('<div id="application-form">')[1].split('id="history-title"')[0]
    controls = re.findall(r"<(?:input|textarea|select)\b[^>]*>", shown)
    assert len(controls) > 60 and all(" disabled" in c for c in controls)
    assert 'name="action"' not in html and 'enctype="multipart/form-data"' not in html


def test_a_second_open_application_of_the_company_is_refused_at_the_business_number(stack, world):
    browser = stack.sign_in("repeater")
    round_id = world.open_round()
    first = start(stack, browser, round_id)
    assert send(stack, browser, first, flatten(documents("10000010")), "submit").status_code == 303
    second = start(stack, browser, round_id)
    assert second != first
    typed = flatten(documents("10000010", name="同一家公司"))
    response = send(stack, browser, second, typed)
    assert response.status_code == 400
    assert field_message(response.text, "company.business_number") == (
        "統一編號 10000010 在本梯次已有一件進行中的申請案"
    )
    form = BrowserForm(response.text, "application-form")
    assert form.control("company.name")["value"] == "同一家公司"
    assert world.application(second).company_data == "{}"  # nothing of it was stored


def test_a_closed_round_refuses_the_submit_and_keeps_the_draft(stack, world):
    browser = stack.sign_in("slow")
    round_id = world.open_round()
    application_id = start(stack, browser, round_id)
    closes = utcnow() - timedelta(seconds=1)
    with world.transaction() as db:  # the round closed while the form was being filled in
        db.get(Round, round_id).closes_at = closes
    response = send(stack, browser, application_id, flatten(documents("10000015")), "submit")
    assert response.status_code == 409
    last = taipei(closes - timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S")
    summary = re.search(r'id="error-summary".*?</div>', response.text, re.S).group(0)
    assert f'<a href="#application-form">本梯次已於 {last}（台北時間）截止</a>' in summary
    assert BrowserForm(response.text, "application-form").control("company.name")["value"]
    assert world.application(application_id).status == S.DRAFT
    assert (
        apps.documents(world.application(application_id))["company"]["name"] == "新創應用有限公司"
    )


# ---- supporting files ------------------------------------------------------------------------


def stored_files(stack, application_id: int) -> list:
    root = stack.state / "files" / "applications" / str(application_id)
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_files_over_the_limit_or_of_the_wrong_type_are_refused_and_nothing_else_is_lost(
    stack, world
):
    browser = stack.sign_in("uploader")
    application_id = start(stack, browser, world.open_round())
    typed = {"company.name": "上傳公司", "proposal.title": "有附件的提案"}
    big = b"%PDF-" + b"x" * (MAX_MB * 1024 * 1024 - 4)  # one byte over 1 MiB
    not_a_pdf = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
    response = send(
        stack,
        browser,
        application_id,
        typed,
        files={MOU: ("mou.pdf", big, "application/pdf"), MATERIAL: ("product.pdf", not_a_pdf)},
    )
    assert response.status_code == 400
    html = response.text
    assert field_message(html, MOU) == "檔案超過 1 MB 上限"
    assert field_message(html, MATERIAL) == "檔案內容不是有效的 PDF 檔"
    assert 'aria-describedby="f-proposal-bonus-mou_file-hint f-proposal-bonus-mou_file-msg"' in html
    form = BrowserForm(html, "application-form")
    assert form.control("company.name")["value"] == "上傳公司"
    assert form.control("proposal.title")["value"] == "有附件的提案"
    stored = apps.documents(world.application(application_id))
    assert stored["company"]["name"] == "上傳公司"  # the text was saved
    assert stored["proposal"]["bonus"].get("mou_file") is None
    assert stored_files(stack, application_id) == []
    # a type that is not accepted at all, whatever its content
    wrong = send(stack, browser, application_id, {}, files={MOU: ("mou.exe", PDF)})
    assert field_message(wrong.text, MOU) == "只接受 PDF、DOCX、PPTX、ODT、ODP 檔案"
    assert stored_files(stack, application_id) == []


def test_supporting_files_are_stored_outside_the_database_with_their_record(stack, world):
    browser = stack.sign_in("filer")
    application_id = start(stack, browser, world.open_round("inference"))
    slides = office("pptx")
    response = send(
        stack,
        browser,
        application_id,
        {},
        files={
            MOU: ("合作備忘錄.pdf", PDF, "application/pdf"),
            MATERIAL: ("product.pptx", slides, "application/octet-stream"),
        },
    )
    assert response.status_code == 303, response.text[:2000]
    bonus = apps.documents(world.application(application_id))["proposal"]["bonus"]
    mou = bonus["mou_file"]
    assert {k: v for k, v in mou.items() if k != "key"} == {
        "name": "合作備忘錄.pdf",
        "size": len(PDF),
        "sha256": hashlib.sha256(PDF).hexdigest(),
        "type": "application/pdf",
    }
    assert re.fullmatch(
        rf"applications/{application_id}/[0-9a-f]{{32}}/合作備忘錄\.pdf", mou["key"]
    )
    assert bonus["product_material_file"]["size"] == len(slides)
    assert (stack.state / "files" / mou["key"]).read_bytes() == PDF
    page = browser.get(stack.url(f"/services/quota/applications/{application_id}")).text
    assert f'/applications/{application_id}/files/mou">合作備忘錄.pdf</a>' in page
    download = browser.get(stack.url(f"/services/quota/applications/{application_id}/files/mou"))
    assert download.content == PDF
    assert download.headers["Content-Type"] == "application/pdf"
    assert (
        "filename*=UTF-8''%E5%90%88%E4%BD%9C%E5%82%99%E5%BF%98%E9%8C%84.pdf"
        in (download.headers["Content-Disposition"])
    )
    # a new upload replaces the file; "remove" drops the other
    again = send(
        stack,
        browser,
        application_id,
        {f"{MATERIAL}.remove": True},
        files={MOU: ("mou-v2.pdf", PDF + b"%v2\n", "application/pdf")},
    )
    assert again.status_code == 303
    bonus = apps.documents(world.application(application_id))["proposal"]["bonus"]
    assert bonus["mou_file"]["name"] == "mou-v2.pdf" and bonus["product_material_file"] is None
    assert [p.name for p in stored_files(stack, application_id)] == ["mou-v2.pdf"]
    assert (
        browser.get(
            stack.url(f"/services/quota/applications/{application_id}/files/product-material")
        ).status_code
        == 404
    )


def test_supporting_files_for_the_owner_operators_and_assigned_reviewers_only(stack, world):
    browser, application_id = submitted(stack, world, "sharer", "10000021", "inference")
    # the file comes with a supplement: the operator asks for the MOU
    with world.operating(application_id) as (db, operator, application):
        apps.start_qualification(db, operator, application, now=utcnow())
        apps.request_supplement(
            db, operator, application, fields=[MOU], message="請附合作備忘錄",
            due_day=taipei(utcnow()).date() + timedelta(days=7), now=utcnow(),
        )  # fmt: skip
    response = send(stack, browser, application_id, {}, "resubmit", files={MOU: ("m.pdf", PDF)})
    assert response.status_code == 303, response.text[:3000]
    url = stack.url(f"/services/quota/applications/{application_id}/files/mou")
    assert browser.get(url).content == PDF
    assert stack.sign_in("operator").get(url).content == PDF
    reviewer = stack.sign_in("reviewer")
    refused = reviewer.get(url)
    assert refused.status_code == 404 and NOT_YOURS in refused.text  # not assigned yet
    stranger = stack.sign_in("stranger")
    assert stranger.get(url).status_code == 404
    with world.operating(application_id) as (db, operator, application):
        apps.start_qualification(db, operator, application, now=utcnow())
        for criterion in apps.CRITERIA:
            apps.record_criterion(db, operator, application, criterion, True, now=utcnow())
        apps.qualify(db, operator, application, now=utcnow())
        review.assign(db, operator, application, world.person(db, "reviewer"), now=utcnow())
    assert reviewer.get(url).content == PDF
    # the reviewer reads the file, not the applicant's page
    assert (
        reviewer.get(stack.url(f"/services/quota/applications/{application_id}")).status_code == 404
    )
    with world.transaction() as db:
        review.declare_conflict(
            db, world.person(db, "reviewer"), db.get(Application, application_id),
            reason="前同事", now=utcnow(),
        )  # fmt: skip
    assert reviewer.get(url).status_code == 404  # recused


# ---- permissions ------------------------------------------------------------------------------


def test_applicant_a_cannot_open_or_change_bs_application(stack, world):
    owner, application_id = submitted(stack, world, "owner-b", "10000026")
    other = stack.sign_in("other-a")
    base = f"/services/quota/applications/{application_id}"
    page = other.get(stack.url(base))
    assert page.status_code == 404 and NOT_YOURS in page.text
    token = xsrf(other.get(stack.url("/services/quota/applications")).text)
    for path in (base, base + "/withdraw", base + "/api-key"):
        refused = other.post(stack.url(path), data={"_xsrf": token, "action": "save"})
        assert refused.status_code == 404 and NOT_YOURS in refused.text, path
    assert other.get(stack.url(base + "/withdraw")).status_code == 404
    missing = other.get(stack.url("/services/quota/applications/999999"))
    assert missing.status_code == 404 and NOT_YOURS in missing.text  # the same answer
    assert world.application(application_id).status == S.SUBMITTED
    # without the XSRF token not even the owner changes anything
    forged = owner.post(stack.url(base + "/withdraw"), data={"reason": "x"})
    assert forged.status_code == 403
    assert world.application(application_id).status == S.SUBMITTED


def test_operators_read_the_page_but_do_not_edit_it(stack, world):
    _browser, application_id = submitted(stack, world, "watched", "10000031")
    operator = stack.sign_in("operator")
    page = operator.get(stack.url(f"/services/quota/applications/{application_id}"))
    assert page.status_code == 200 and 'data-status="submitted"' in page.text
    assert 'name="action"' not in page.text


# ---- supplement, result, withdrawal -------------------------------------------------------------


def test_a_supplement_changes_only_the_listed_fields(stack, world):
    browser, application_id = submitted(stack, world, "supplier", "10000036")
    due_day = taipei(utcnow()).date() + timedelta(days=7)
    with world.operating(application_id) as (db, operator, application):
        apps.start_qualification(db, operator, application, now=utcnow())
        apps.request_supplement(
            db, operator, application, fields=["company.founding_date", "proposal.dataset"],
            message="設立日期與資料集需更正", due_day=due_day, now=utcnow(),
        )  # fmt: skip
    html = browser.get(stack.url(f"/services/quota/applications/{application_id}")).text
    assert f"請於 {due_day} 23:59:59（台北時間）前修正下列欄位並重新送出" in html
    assert "設立日期與資料集需更正" in html
    fields = re.search(r'<ul id="supplement-fields">(.*?)</ul>', html, re.S).group(1)
    assert re.findall(r"<li>(.*?)</li>", fields) == [
        "企業基本資料 · 設立登記日期",
        "訓練資料集（至少填一種資料量）",
    ]
    form = BrowserForm(html, "application-form")
    assert not form.control("company.founding_date")["disabled"]
    assert not form.control("proposal.dataset.image_count")["disabled"]
    assert form.control("company.name")["disabled"]
    assert form.control("proposal.title")["disabled"]
    assert MOU not in {c["name"] for c in form.controls}  # no file box where none may change
    # a forged post that also changes the company name changes only the listed fields
    url = stack.url(f"/services/quota/applications/{application_id}")
    saved = browser.post(
        url,
        data=form.filled(
            {"company.founding_date": "2020-02-29", "proposal.dataset.image_count": "300"}
        )
        + [("company.name", "偷改的名稱"), ("action", "save")],
        allow_redirects=False,
    )
    assert saved.status_code == 303
    stored = apps.documents(world.application(application_id))
    assert stored["company"]["founding_date"] == "2020-02-29"
    assert stored["proposal"]["dataset"]["image_count"] == "300"
    assert stored["company"]["name"] == "新創應用有限公司"
    with world.quota.factory() as db:
        event = db.scalar(
            select(AuditEvent).where(
                AuditEvent.action == "application.supplement",
                AuditEvent.subject_id == str(application_id),
            )
        )
        assert json.loads(event.detail)["fields"] == [
            "company.founding_date",
            "proposal.dataset.image_count",
        ]
    resubmitted = send(stack, browser, application_id, {}, "resubmit")
    assert resubmitted.headers["Location"].endswith("?resubmitted=1")
    assert world.history(application_id)[-1] == ("supplement_requested", "resubmitted")
    html = browser.get(stack.url(resubmitted.headers["Location"])).text
    assert "補件已送出" in html and 'id="supplement"' not in html


def test_after_the_supplement_deadline_the_page_says_the_application_was_withdrawn(stack, world):
    browser, application_id = submitted(stack, world, "forgetful", "10000042")
    with world.operating(application_id) as (db, operator, application):
        apps.start_qualification(db, operator, application, now=utcnow())
        request = apps.request_supplement(
            db, operator, application, fields=["company.address"], message="地址不完整",
            due_day=taipei(utcnow()).date(), now=utcnow(),
        )  # fmt: skip
        request_id = request.id
    # the deadline (end of a Taipei day; its edges are the domain's tests) has passed
    due_before = utcnow() - timedelta(seconds=1)
    with world.transaction() as db:
        db.get(SupplementRequest, request_id).due_before = due_before
    # the stack's housekeeping job withdraws it within a notice interval
    wait_for(lambda: world.application(application_id).status == S.WITHDRAWN, 30, "expiry job")
    html = browser.get(stack.url(f"/services/quota/applications/{application_id}")).text
    last = taipei(due_before - timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S")
    assert f"未於 {last}（台北時間）前完成補件，申請案視同撤案。" in html
    assert 'data-status="withdrawn">已撤案' in html
    assert f"補件逾期（期限 {last}），視同撤案" in html  # the history's reason
    assert 'name="action"' not in html and 'id="withdraw"' not in html


def test_a_rejection_shows_the_reason(stack, world):
    browser, application_id = submitted(stack, world, "rejected", "10000047")
    with world.operating(application_id) as (db, operator, application):
        apps.start_qualification(db, operator, application, now=utcnow())
        apps.record_criterion(db, operator, application, "not_china_invested", False, now=utcnow())
        apps.reject(db, operator, application, reason="陸資企業 / China-invested", now=utcnow())
    url = stack.url(f"/services/quota/applications/{application_id}")
    html = browser.get(url).text
    assert "申請案未獲核定。 原因： 陸資企業</p>" in html
    english = browser.get(url + "?lang=en").text
    assert "The application was not approved. Reason: China-invested" in english


def test_withdraw_asks_first_and_happens_once(stack, world):
    browser, application_id = submitted(stack, world, "quitter", "10000052")
    url = stack.url(f"/services/quota/applications/{application_id}/withdraw")
    confirm = browser.get(url).text
    assert "撤回後申請案不能恢復" in confirm and "確定撤回" in confirm
    assert world.application(application_id).status == S.SUBMITTED  # asking changes nothing
    for _click in range(2):
        done = browser.post(
            url, data={"_xsrf": xsrf(confirm), "reason": "改下一梯次"}, allow_redirects=False
        )
        assert done.status_code == 303
        assert done.headers["Location"].endswith(f"/applications/{application_id}?withdrawn=1")
    assert world.history(application_id) == [("draft", "submitted"), ("submitted", "withdrawn")]
    html = browser.get(stack.url(done.headers["Location"])).text
    assert "申請案已撤回。" in html and "改下一梯次" in html
    assert "這份申請案已結案，不能撤回。" in browser.get(url).text


# ---- the award and the API key ----------------------------------------------------------------


def test_the_award_with_members_and_the_api_key_shown_once(stack, world):
    browser, application_id = submitted(stack, world, "winner", "10000057", "inference")
    with world.transaction() as db:  # the applicant is the company's project lead
        world.person(db, "winner").email = sample.company()["lead"]["email"]
    now = utcnow()
    with world.operating(application_id) as (db, operator, application):
        apps.start_qualification(db, operator, application, now=now)
        for criterion in apps.CRITERIA:
            apps.record_criterion(db, operator, application, criterion, True, now=now)
        apps.qualify(db, operator, application, now=now)
        for name in ("r1", "r2", "r3"):
            person = Account(username=name, email=f"{name}@ntu.example.edu.tw", is_reviewer=True,
                             created_at=now)  # fmt: skip
            db.add(person)
            db.flush()
            review.assign(db, operator, application, person, now=now)
            review.submit_sheet(db, person, application, INFERENCE_SCORES,
                                comment_to_applicant=f"{name} 的建議", now=now)  # fmt: skip
        assert review.decide_inference(db, operator, application, tier="L2", now=now)
        result = awards.award(db, operator, application, notice_date=taipei(now).date(), now=now)
        first_key = result.api_key
    with world.quota.factory() as db:
        award = db.scalar(select(Award).where(Award.application_id == application_id))
        window = (
            taipei(award.window_start).strftime("%Y-%m-%d %H:%M:%S"),
            taipei(last_second(award.window_end)).strftime("%Y-%m-%d %H:%M:%S"),
        )
    url = stack.url(f"/services/quota/applications/{application_id}")
    html = browser.get(url).text
    assert 'id="award-tier">L2<' in html and 'id="award-points">2000<' in html
    assert f'id="award-window">{window[0]} → {window[1]}<' in html
    members = re.search(r'<table class="table table-sm" id="members">.*?</table>', html, re.S)
    rows = re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td></tr>", members.group(0))
    assert rows[0] == ("winner", "lead@startup.example.tw", "專案主持人")
    assert rows[1][1:] == ("contact@startup.example.tw", "專案聯絡人")
    assert "r1 的建議" in html and "r3 的建議" in html
    assert first_key[:12] in html and first_key not in html  # the prefix only
    # replace the key: the new one is on this answer, once
    token = xsrf(html)
    replaced = browser.post(
        url + "/api-key", data={"_xsrf": token, "replaces": first_key[:12]}, allow_redirects=False
    )
    assert replaced.status_code == 200
    assert replaced.headers["Cache-Control"] == "private, no-store"
    new_key = re.search(r'<code id="api-key"[^>]*>(aip_[A-Za-z0-9_-]{43})</code>', replaced.text)
    assert new_key, replaced.text[:3000]
    with world.quota.factory() as db:
        assert awards.verify_api_key(db, new_key.group(1)) is not None
        assert awards.verify_api_key(db, first_key) is None  # stopped at once
    assert new_key.group(1) not in browser.get(url).text  # never shown again
    # the same form again (a double click) replaces nothing more
    again = browser.post(url + "/api-key", data={"_xsrf": token, "replaces": first_key[:12]})
    assert again.status_code == 409 and "這把金鑰已經更換過了" in again.text
    with world.quota.factory() as db:
        keys = db.scalars(
            select(ApiKey).where(ApiKey.award_id == award.id).order_by(ApiKey.id)
        ).all()
    assert [k.revoked_at is None for k in keys] == [False, True]
    # an owner who is not the project's lead or contact may not replace it: the domain's reason
    with world.transaction() as db:
        db.scalar(
            select(Membership).where(Membership.account_id == world.person(db, "winner").id)
        ).role = "trainee"
    refused = browser.post(
        url + "/api-key", data={"_xsrf": token, "replaces": new_key.group(1)[:12]}
    )
    assert refused.status_code == 403
    assert "只有計畫主持人、聯絡人或營運單位可以更換金鑰" in refused.text


# ---- languages --------------------------------------------------------------------------------


def test_the_pages_switch_to_english(stack, world):
    browser = stack.sign_in("bilingual")
    application_id = start(stack, browser, world.open_round())
    url = stack.url(f"/services/quota/applications/{application_id}")
    chinese = browser.get(url).text
    assert '<html lang="zh-Hant-TW">' in chinese
    assert '<label for="f-company-business_number" class="form-label">統一編號</label>' in chinese
    assert ">儲存草稿</button>" in chinese and "附件 2：算力平台使用申請書（模型訓練類）" in chinese
    english = browser.get(url + "?lang=en").text
    assert '<html lang="en">' in english
    assert 'class="form-label">Unified business number</label>' in english
    assert ">Save draft</button>" in english and "Attachment 2: training proposal" in english
    listing = browser.get(stack.url("/services/quota/applications")).text  # remembered
    assert "<h1>My applications</h1>" in listing and "Start a new application" in listing


# ---- the demo's seed ---------------------------------------------------------------------------


def test_the_demo_applicant_has_a_submitted_training_application(db):
    now = at("2026-11-28 09:00:00")
    assert seed_demo(db, now=now) is True
    applicant = db.scalar(select(Account).where(Account.username == "applicant"))
    [application] = db.scalars(select(Application).where(Application.account_id == applicant.id))
    round_ = db.get(Round, application.round_id)
    assert (application.status, application.category, round_.category) == (
        S.SUBMITTED,
        "training",
        "training",
    )
    assert application.submitted_at == now and application.business_number == "22099131"
    # the guideline's closing day has passed by the seed day: the demo round runs 60 days
    assert round_.opens_at == at("2026-11-28 00:00:00")
    assert round_.closes_at == at("2027-01-28 00:00:00")
    assert [r.category for r in db.scalars(select(Round).order_by(Round.id))] == [
        "training",
        "inference",
    ]
    assert [(h.old_status, h.new_status) for h in apps.history(db, applicant, application.id)] == [
        ("draft", "submitted")
    ]
    assert apps.documents(application)["company"]["lead"]["email"] == applicant.email
    assert seed_demo(db, now=now) is False
    assert db.scalar(select(func.count()).select_from(Application)) == 1
