"""The applications, review and awards API (issue 3) over real HTTP with real JupyterHub tokens.

One real platform per module (tests/stack.py: hub, node proxy, OIDC provider, mail catcher,
quota service) signs the people in and issues their tokens. Two ways in:

- through the hub's proxy to the stack's own quota service, on the real clock: the
  representative flow from the first draft to the award notice, with the refusals;
- a second real quota service in this process (``QuotaService.make_web_app`` served by a
  tornado HTTPServer in a thread) on a fresh SQLite or PostgreSQL database per test, whose
  hub authentication asks the same hub about every token. Only its clock is chosen by the
  test (the ``clock`` setting), to stand at 23:59:59 and at 00:00:00 of a deadline.

Every answer is checked against the OpenAPI document: the status must be listed for the
path and method, and the body must match the schema given for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from urllib.parse import urlsplit

import pytest
import requests
import yaml
from jsonschema import Draft202012Validator
from jupyterhub.services.auth import HubOAuth
from sqlalchemy import func, select
from tornado import web
from tornado.httpserver import HTTPServer

from quota_service import application_api, awards, handlers, review
from quota_service import applications as apps
from quota_service import db as database
from quota_service.app import QuotaService
from quota_service.models import (
    Account,
    ApiKey,
    ApplicationStatusChange,
    AuditEvent,
    LedgerEntry,
)
from quota_service.timewindow import TAIPEI, utcnow
from tests import application_samples as sample
from tests.conftest import at
from tests.platform import QuotaDB, wait_for
from tests.stack import Stack, free_port
from tests.test_review import INFERENCE_SCORES, TRAINING_SCORES

pytestmark = pytest.mark.e2e
DOCUMENT = yaml.safe_load(handlers.OPENAPI.read_text())
PREFIX = "/services/quota/api/v1"
# accounts the stack's quota service knows, so that the hub gives them their roles
REVIEWERS = {
    "reviewer": "reviewer@aipower.example.tw",
    "reviewer2": "r2@ntu.example.edu.tw",
    "reviewer3": "r3@nycu.example.edu.tw",
    "reviewer4": "r4@nthu.example.edu.tw",
}
LEAD = awards.username_for_email("lead@startup.example.tw")  # made by the award
APPLICANTS = ("alice", "bob")
NOW = at("2026-09-15 10:00:00")


# ---- the OpenAPI document as the judge of every answer -----------------------------------------


def template_of(path: str) -> str:
    found = [t for t in DOCUMENT["paths"] if re.fullmatch(re.sub(r"\{\w+\}", "[^/]+", t), path)]
    assert len(found) == 1, f"{path} matches {found} in the document"
    return found[0]


def conforms(method: str, path: str, response: requests.Response) -> None:
    template = template_of(urlsplit(path).path)
    documented = DOCUMENT["paths"][template][method.lower()]["responses"]
    answer = documented.get(str(response.status_code))
    assert answer, f"{method} {template} answered {response.status_code}: not in the document"
    if "$ref" in answer:
        answer = DOCUMENT["components"]["responses"][answer["$ref"].rsplit("/", 1)[1]]
    schema = answer["content"]["application/json"]["schema"]
    Draft202012Validator({**schema, "components": DOCUMENT["components"]}).validate(response.json())


class Caller:
    """One person's token against one quota service."""

    def __init__(self, base: str, token: str):
        self.base, self.http = base, Stack.client()
        self.http.headers["Authorization"] = f"token {token}"

    def call(self, method: str, path: str, body: dict | None = None) -> requests.Response:
        response = self.http.request(method, self.base + path, json=body, timeout=60)
        conforms(method, path, response)
        return response

    def get(self, path):
        return self.call("GET", path)

    def post(self, path, body=None):
        return self.call("POST", path, body)

    def put(self, path, body):
        return self.call("PUT", path, body)

    def patch(self, path, body):
        return self.call("PATCH", path, body)

    def delete(self, path):
        return self.call("DELETE", path)


def ok(response: requests.Response, status: int = 200) -> dict | list:
    assert response.status_code == status, (response.status_code, response.text)
    return response.json()


def refused(response: requests.Response, status: int, reason: str) -> dict:
    assert (response.status_code, response.json()["reason"]) == (status, reason), response.text
    return response.json()


# ---- the platform, its people and their tokens --------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    state = tmp_path_factory.mktemp("appapi-stack")
    platform = Stack(state, metering_interval=30)
    platform.start()
    quota = QuotaDB(f"sqlite:///{state / 'quota.sqlite'}")
    with database.transaction(quota.factory) as db:
        for name, email in REVIEWERS.items():
            if name != "reviewer":  # the demo seed has it
                db.add(Account(username=name, email=email, is_reviewer=True, created_at=utcnow()))
    quota.close()
    yield platform
    platform.stop()


@pytest.fixture(scope="module")
def tokens(stack) -> dict[str, str]:
    found = {}
    for name in ("operator", *REVIEWERS, *APPLICANTS, LEAD):
        found[name] = stack.token_for(stack.sign_in(name), name)
    # what an operator would make for a script: the service, without the operator scope
    browser = stack.sign_in("operator")
    made = browser.post(
        f"{stack.base}/hub/api/users/operator/tokens",
        json={"note": "script", "scopes": ["access:services!service=quota"]},
        headers={"X-XSRFToken": stack.hub_xsrf(browser)},
        timeout=30,
    )
    found["operator-script"] = ok(made, 201)["token"]
    return found


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


class InProcessService:
    """The quota service's own web application on a real HTTP server in a thread."""

    def __init__(self, database_url: str, clock: Clock, **settings):
        self.quota = QuotaService(db_url=database_url, **settings)
        self.quota.initialize([])
        self.web_app = self.quota.make_web_app()
        self.web_app.settings["clock"] = clock
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}{PREFIX}"
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = HTTPServer(self.web_app)
        server.listen(self.port, "127.0.0.1")
        self._ready.set()
        await self._stop.wait()
        server.stop()

    def start(self) -> InProcessService:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self.quota.engine.dispose()


@pytest.fixture(scope="module")
def hub_auth(stack):
    """The in-process service checks tokens with the stack's hub, like the stack's own."""
    HubOAuth.clear_instance()
    HubOAuth.instance(
        api_url=f"{stack.base}/hub/api",
        access_scopes={"access:services!service=quota"},
        cache_max_age=60,
        # required, never used by the API: a person's token is checked with that token
        # itself, and the OAuth client serves only the pages' cookie sign-in
        api_token=secrets.token_hex(16),
        oauth_client_id="service-quota-in-process",
    )
    yield
    HubOAuth.clear_instance()


@pytest.fixture
def clock():
    return Clock(NOW)


@pytest.fixture
def people(hub_auth, tokens, database_url, session_factory, clock):
    """Each person as a Caller of a fresh in-process service (two reviewers per application),
    whose database knows the operator and the reviewers as the stack's does."""
    with database.transaction(session_factory) as db:
        db.add(
            Account(
                username="operator",
                email="operator@aipower.example.tw",
                is_operator=True,
                created_at=NOW,
            )
        )
        for name, email in REVIEWERS.items():
            db.add(Account(username=name, email=email, is_reviewer=True, created_at=NOW))
    service = InProcessService(database_url, clock, reviewers_per_application=2).start()
    yield {name: Caller(service.base, token) for name, token in tokens.items()}
    service.stop()


# ---- walking an application through the API ----------------------------------------------------


def make_round(operator: Caller, category: str = "training") -> int:
    body = {
        "name": f"115 年第 1 梯次 {category}",
        "category": category,
        "opens_at": "2026-08-01T00:00:00+08:00",
        "closes_at": "2026-10-31T00:00:00+08:00",
    }
    return ok(operator.post("/rounds", body), 201)["id"]


def filled(applicant: Caller, round_id: int, business_number: str = "22099131", **parts) -> int:
    application = ok(applicant.post("/applications", {"round_id": round_id}), 201)
    category = application["category"]
    documents = {
        "company": sample.company(business_number),
        "consent": sample.CONSENT,
        "declarations": sample.DECLARATIONS,
        "proposal": sample.training() if category == "training" else sample.inference(),
    } | parts
    saved = ok(applicant.patch(f"/applications/{application['id']}", documents))
    assert saved["errors"] == {}
    return application["id"]


def submitted(applicant: Caller, round_id: int, business_number: str = "22099131") -> int:
    application_id = filled(applicant, round_id, business_number)
    assert ok(applicant.post(f"/applications/{application_id}/submit"))["status"] == "submitted"
    return application_id


def qualified(operator: Caller, applicant: Caller, round_id: int, business_number="22099131"):
    application_id = submitted(applicant, round_id, business_number)
    ok(operator.post(f"/applications/{application_id}/qualification"))
    for criterion in apps.CRITERIA:
        ok(
            operator.put(
                f"/applications/{application_id}/qualification/{criterion}", {"passed": True}
            )
        )
    assert ok(operator.post(f"/applications/{application_id}/qualify"))["status"] == (
        "professional_review"
    )
    return application_id


def scored(people, application_id: int, sheets: dict[str, dict]) -> None:
    for name, scores in sheets.items():
        ok(
            people["operator"].post(
                f"/applications/{application_id}/reviewers", {"reviewer": name}
            ),
            201,
        )
        ok(people[name].put(f"/applications/{application_id}/score-sheet", {"scores": scores}))


def statuses(caller: Caller, application_id: int) -> list[str]:
    return [h["new_status"] for h in ok(caller.get(f"/applications/{application_id}/history"))]


# ---- the document --------------------------------------------------------------------------------


def operations_of_routes() -> set[tuple[str, str]]:
    """(path template, method) of every API route the service has."""
    found = set()
    for pattern, handler in handlers.routes():
        if not pattern.startswith("api/v1/"):
            continue
        for method in ("get", "post", "put", "patch", "delete"):
            if getattr(handler, method) is not getattr(web.RequestHandler, method):
                found.add((pattern.removeprefix("api/v1"), method))
    return found


def normalised(path: str) -> str:
    """Path parameters as {}: named groups, plain groups and {names} alike."""
    path = re.sub(r"\(\?P<\w+>[^)]*\)", "{}", path)
    path = re.sub(r"\([^)]*\)", "{}", path)
    return re.sub(r"\{\w+\}", "{}", path).replace("\\", "")


def test_every_api_route_is_in_the_document_and_every_documented_path_is_served():
    served = {(normalised(p), m) for p, m in operations_of_routes()}
    documented = {
        (normalised(path), method)
        for path, item in DOCUMENT["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }
    assert served == documented
    # the applications API's own routes, by the names of their parameters too
    for pattern, handler in application_api.routes():
        template = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern).removeprefix("api/v1")
        assert template in DOCUMENT["paths"], template
        assert all(
            (getattr(handler, m) is not getattr(web.RequestHandler, m))
            == (m in DOCUMENT["paths"][template])
            for m in ("get", "post", "put", "patch", "delete")
        ), template
    for schema in DOCUMENT["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


def test_the_review_and_award_settings_are_checked_traits():
    service = QuotaService(
        reviewers_per_application=5,
        review_bonus_per_item="1.5",
        inference_pass_mark="75",
        tier_points={"L1": 500, "L2": 1500, "L3": 5000},
        award_window_months=6,
    )
    assert service.review_settings == review.ReviewSettings(
        reviewers_per_application=5,
        bonus_per_item=Decimal("1.5"),
        spread_limit=Decimal("20"),
        inference_pass_mark=Decimal("75"),
    )
    assert service.award_settings == awards.AwardSettings(
        tier_points={"L1": 500, "L2": 1500, "L3": 5000}, window_months=6
    )
    for bad in (
        {"review_bonus_per_item": "two"},
        {"review_spread_limit": "NaN"},
        {"inference_pass_mark": "100.01"},
        {"tier_points": {"L1": 1000, "L2": 2000}},
        {"tier_points": {"L1": 0, "L2": 2000, "L3": 6000}},
        {"reviewers_per_application": 0},
        {"award_window_months": 25},
    ):
        with pytest.raises(ValueError):
            QuotaService(**bad)


# ---- through the hub, on the real clock -----------------------------------------------------------


def test_through_the_hub_from_the_first_draft_to_the_award_notice(stack, tokens):
    """The stack's own quota service behind the proxy: three reviewers per application,
    the real clock, the award mailed through the real SMTP catcher."""
    people = {name: Caller(stack.url(PREFIX), token) for name, token in tokens.items()}
    operator, alice, bob = people["operator"], people["alice"], people["bob"]
    served = requests.get(stack.url(PREFIX + "/openapi.yaml"), timeout=30)
    assert served.status_code == 200 and yaml.safe_load(served.text) == DOCUMENT

    now = utcnow()
    body = {
        "name": "115 年第 2 梯次 訓練",
        "category": "training",
        "opens_at": (now - timedelta(days=1)).astimezone(TAIPEI).isoformat(),
        "closes_at": (now + timedelta(days=30)).astimezone(TAIPEI).isoformat(),
    }
    refused(alice.post("/rounds", body), 403, "forbidden")
    round_id = ok(operator.post("/rounds", body), 201)["id"]
    assert ok(alice.get("/rounds"))[0]["accepting"] is True

    application_id = submitted(alice, round_id, "53212539")
    path = f"/applications/{application_id}"
    # applicant B cannot read A's application, nor act on it
    for response in (bob.get(path), bob.get(path + "/history"), bob.post(path + "/withdraw")):
        refused(response, 404, "not-found")
    assert ok(bob.get("/applications")) == []
    refused(bob.get("/applications?all=true"), 403, "forbidden")
    assert [a["id"] for a in ok(alice.get("/applications"))] == [application_id]

    ok(operator.post(path + "/qualification"))
    for criterion in apps.CRITERIA:
        ok(operator.put(f"{path}/qualification/{criterion}", {"passed": True}))
    ok(operator.post(path + "/qualify"))
    for name in ("reviewer", "reviewer2", "reviewer3"):
        ok(operator.post(path + "/reviewers", {"reviewer": name}), 201)
    refused(operator.post(path + "/reviewers", {"reviewer": "reviewer4"}), 409, "conflict")
    # a reviewer who declares a conflict is recused and can no longer open the application
    ok(people["reviewer3"].post(path + "/conflict", {"reason": "前雇主 / former employer"}))
    refused(people["reviewer3"].get(path), 404, "not-found")
    refused(
        people["reviewer3"].put(path + "/score-sheet", {"scores": TRAINING_SCORES}),
        404,
        "not-found",
    )
    ok(operator.post(path + "/reviewers", {"reviewer": "reviewer4"}), 201)
    for name in ("reviewer", "reviewer2", "reviewer4"):
        assert (
            ok(people[name].put(path + "/score-sheet", {"scores": TRAINING_SCORES}))["total"]
            == "84.25"
        )
    assert ok(operator.get(path + "/aggregate"))["mean"] == "84.25"

    refused(alice.post(path + "/decision", {"selected": True, "tier": "L1"}), 403, "forbidden")
    ok(operator.post(path + "/decision", {"selected": True, "tier": "L1"}))
    award = {
        "notice_date": now.astimezone(TAIPEI).date().isoformat(),
        "trusted_networks": ["203.0.113.0/28"],
    }
    # only operators award: not the applicant, not a reviewer, not an operator's script token
    for who in ("alice", "reviewer", "operator-script"):
        refused(people[who].post(path + "/award", award), 403, "forbidden")
    result = ok(operator.post(path + "/award", award), 201)
    assert (result["award"]["tier"], result["award"]["points"], result["api_key"]) == (
        "L1",
        1000,
        None,
    )
    assert statuses(alice, application_id) == [
        "submitted", "qualification", "professional_review", "selected", "awarded",
    ]  # fmt: skip
    mail = wait_for(
        lambda: [m for m in stack.mails() if "lead@startup.example.tw" in m["To"]],
        30,
        "the award notice to the project lead",
    )[0]
    assert "核定通知 / award notice" in mail["Subject"]
    assert "L1 級，1000 點" in mail.get_content()


# ---- in this process, on a database per test (SQLite and PostgreSQL) and a chosen clock ----------


def audit_count(session_factory, action: str) -> int:
    with session_factory() as db:
        return db.scalar(select(func.count()).where(AuditEvent.action == action))


def test_rounds_are_defined_by_operators_and_read_by_everyone(people, clock):
    operator, alice = people["operator"], people["alice"]
    body = {
        "name": "115 年第 1 梯次",
        "category": "training",
        "opens_at": "2026-08-01T00:00:00+08:00",
        "closes_at": "2026-10-31T00:00:00+08:00",
    }
    refused(alice.post("/rounds", body), 403, "forbidden")
    # an operator's token without the operator scope acts as a person without the role
    refused(people["operator-script"].post("/rounds", body), 403, "forbidden")
    bad = {"name": "", "category": "both", "opens_at": "2026-08-01 00:00", "closes_at": 5}
    errors = refused(operator.post("/rounds", bad), 422, "invalid")["errors"]
    assert set(errors) == {"name", "category", "opens_at", "closes_at"}
    assert "2026-10-31T00:00:00+08:00" in errors["opens_at"]
    backwards = body | {"closes_at": "2026-07-31T23:59:59+08:00"}
    assert set(refused(operator.post("/rounds", backwards), 422, "invalid")["errors"]) == {
        "closes_at"
    }
    created = ok(operator.post("/rounds", body), 201)
    assert (created["closes_at"], created["last_second"], created["accepting"]) == (
        "2026-10-31T00:00:00+08:00",
        "2026-10-30T23:59:59+08:00",
        True,
    )
    # UTC in, Asia/Taipei out: the same moment
    utc = ok(operator.post("/rounds", body | {"closes_at": "2026-10-30T16:00:00Z"}), 201)
    assert utc["closes_at"] == "2026-10-31T00:00:00+08:00"
    clock.now = at("2026-10-31 00:00:00")
    assert [r["accepting"] for r in ok(alice.get("/rounds"))] == [False, False]


def test_a_draft_keeps_what_was_typed_and_only_its_applicant_may_change_it(people, session_factory):
    operator, alice, bob = people["operator"], people["alice"], people["bob"]
    round_id = make_round(operator)
    draft = ok(alice.post("/applications", {"round_id": round_id}), 201)
    path = f"/applications/{draft['id']}"
    assert (draft["status"], draft["documents"]["company"]) == ("draft", {})
    # the account is made at the first visit, without roles
    with session_factory() as db:
        account = db.scalar(select(Account).where(Account.username == "alice"))
        assert (account.is_operator, account.is_reviewer) == (False, False)

    company = sample.company("22099132", founding_date="2019-02-30")
    saved = ok(alice.patch(path, {"company": company}))
    assert {"company.business_number", "company.founding_date", "proposal.title"} <= set(
        saved["errors"]
    )
    assert "檢查碼" in saved["errors"]["company.business_number"]
    assert ok(alice.get(path))["documents"]["company"] == company  # as typed, wrong values too
    # the other parts stay when one is saved
    ok(alice.patch(path, {"consent": sample.CONSENT}))
    assert ok(alice.get(path))["documents"]["company"] == company
    refused(alice.patch(path, {"company": "22099131"}), 422, "invalid")

    # applicant B: the same answer as for an application that does not exist
    not_there = refused(alice.get("/applications/999999"), 404, "not-found")
    for response in (bob.get(path), bob.patch(path, {"consent": {}}), bob.post(path + "/submit")):
        assert refused(response, 404, "not-found")["message"] == not_there["message"]
    refused(people["reviewer"].get(path), 404, "not-found")  # not assigned to it
    assert ok(operator.get(path))["id"] == draft["id"]
    refused(operator.patch(path, {"consent": {}}), 403, "forbidden")  # reads, but may not edit

    assert [a["id"] for a in ok(alice.get("/applications"))] == [draft["id"]]
    assert ok(bob.get("/applications")) == []
    refused(alice.get("/applications?all=true"), 403, "forbidden")
    listed = ok(operator.get(f"/applications?all=true&round_id={round_id}&status=draft"))
    assert [a["id"] for a in listed] == [draft["id"]]
    assert ok(operator.get("/applications?all=true&status=submitted")) == []
    errors = refused(operator.get("/applications?all=true&status=sent&round_id=x"), 422, "invalid")
    assert set(errors["errors"]) == {"status", "round_id"}

    # one open application per company and round: the number typed is the company's place
    ok(alice.patch(path, {"company": sample.company("22099131")}))
    other = f"/applications/{ok(bob.post('/applications', {'round_id': round_id}), 201)['id']}"
    taken = refused(bob.patch(other, {"company": sample.company("22099131")}), 422, "invalid")
    assert "already has an open application" in taken["errors"]["company.business_number"]
    refused(bob.post(path + "/withdraw", {"reason": "x"}), 404, "not-found")
    withdrawn = ok(alice.post(path + "/withdraw", {"reason": "改下一梯次 / next round"}))
    assert withdrawn["status"] == "withdrawn"
    refused(alice.post(path + "/withdraw"), 409, "transition-not-allowed")
    assert (
        "company.business_number"
        not in ok(bob.patch(other, {"company": sample.company("22099131")}))["errors"]
    )


def history_rows(session_factory, application_id: int) -> int:
    with session_factory() as db:
        return db.scalar(
            select(func.count()).where(ApplicationStatusChange.application_id == application_id)
        )


def test_submit_refuses_bad_values_keeping_them_and_never_happens_twice(people, session_factory):
    operator, alice, bob = people["operator"], people["alice"], people["bob"]
    round_id = make_round(operator)
    application_id = filled(alice, round_id)
    path = f"/applications/{application_id}"
    ok(alice.patch(path, {"company": sample.company("22099132", employees="twelve")}))
    answer = refused(alice.post(path + "/submit"), 422, "invalid")
    assert set(answer["errors"]) == {"company.business_number", "company.employees"}
    typed = answer["application"]
    assert (typed["status"], typed["documents"]["company"]["employees"]) == ("draft", "twelve")
    assert typed["documents"]["proposal"] == sample.training()  # the rest kept as typed
    assert history_rows(session_factory, application_id) == 0

    ok(alice.patch(path, {"company": sample.company("22099131")}))
    first = ok(alice.post(path + "/submit"))
    assert (first["status"], first["startup_priority"]) == ("submitted", True)
    again = refused(alice.post(path + "/submit"), 409, "transition-not-allowed")
    assert "already submitted" in again["message"]
    assert history_rows(session_factory, application_id) == 1
    assert audit_count(session_factory, "application.status") == 1

    # a double click: two submits at once, one answer 200 and one 409, one history row
    other = filled(bob, round_id, "24536806")
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: bob.post(f"/applications/{other}/submit"), range(2)))
    assert sorted(a.status_code for a in answers) == [200, 409]
    assert history_rows(session_factory, other) == 1


def test_the_round_closes_at_the_last_second_by_the_server_clock(people, clock):
    operator, alice, bob = people["operator"], people["alice"], people["bob"]
    round_id = make_round(operator)
    early, late = filled(alice, round_id), filled(bob, round_id, "24536806")
    clock.now = at("2026-10-30 23:59:59")
    assert ok(alice.post(f"/applications/{early}/submit"))["status"] == "submitted"
    clock.now = at("2026-10-31 00:00:00")
    closed = refused(bob.post(f"/applications/{late}/submit"), 409, "deadline-passed")
    assert "2026-10-30 23:59:59" in closed["message"]
    assert ok(bob.get(f"/applications/{late}"))["status"] == "draft"
    refused(bob.post("/applications", {"round_id": round_id}), 409, "deadline-passed")
    clock.now = at("2026-07-31 23:59:59")  # and not before it opens
    refused(bob.post("/applications", {"round_id": round_id}), 409, "deadline-passed")
    refused(bob.post("/applications", {"round_id": 999}), 422, "invalid")


def test_qualification_with_evidence_and_a_supplement_until_its_last_second(people, clock):
    operator, alice, bob = people["operator"], people["alice"], people["bob"]
    round_id = make_round(operator)
    application_id = submitted(alice, round_id)
    path = f"/applications/{application_id}"
    refused(alice.post(path + "/qualification"), 403, "forbidden")
    criteria = {c["criterion"]: c for c in ok(operator.post(path + "/qualification"))}
    assert list(criteria) == [*apps.CRITERIA, "startup_priority"]
    assert criteria["business_number"]["automatic"] == "pass"
    assert criteria["business_number"]["evidence"]["business_number"] == "22099131"
    assert criteria["industry_codes"]["evidence"]["industry_codes"] == ["J62", "J63"]
    assert criteria["registered_in_taiwan"]["automatic"] == ""  # ticked: the operator decides
    assert criteria["startup_priority"]["automatic"] == "flag"  # founded 2019-05-01
    refused(alice.get(path + "/qualification"), 403, "forbidden")
    refused(operator.put(path + "/qualification/founder", {"passed": True}), 422, "invalid")
    answer = refused(
        operator.put(path + "/qualification/consent", {"passed": "yes"}), 422, "invalid"
    )
    assert set(answer["errors"]) == {"passed"}
    recorded = ok(operator.put(path + "/qualification/consent", {"passed": True, "note": "ok"}))
    assert [c["passed"] for c in recorded if c["criterion"] == "consent"] == [True]
    refused(operator.post(path + "/qualify"), 409, "conflict")  # the others are undecided

    supplement = {
        "fields": ["company.founding_date"],
        "message": "請附設立日期",
        "due_day": "2026-09-20",
    }
    past = refused(
        operator.post(path + "/supplement-request", supplement | {"due_day": "2026-09-14"}),
        422,
        "invalid",
    )
    assert set(past["errors"]) == {"due_day"}
    requested = ok(operator.post(path + "/supplement-request", supplement), 201)
    assert requested["status"] == "supplement_requested"
    seen = ok(alice.get(path))["supplement"]
    assert (seen["fields"], seen["last_second"]) == (
        ["company.founding_date"],
        "2026-09-20T23:59:59+08:00",
    )
    # only the fields asked for may change
    refused(
        alice.post(path + "/supplement", {"changes": {"company.name": "別家"}}), 403, "forbidden"
    )
    bad = ok(alice.post(path + "/supplement", {"changes": {"company.founding_date": "2019-13-01"}}))
    assert set(bad["errors"]) == {"company.founding_date"}
    typed = refused(alice.post(path + "/resubmit"), 422, "invalid")
    assert typed["application"]["documents"]["company"]["founding_date"] == "2019-13-01"
    fixed = ok(
        alice.post(path + "/supplement", {"changes": {"company.founding_date": "2017-12-31"}})
    )
    assert fixed["errors"] == {} and fixed["application"]["documents"]["company"]["name"] == (
        "新創應用有限公司"
    )
    clock.now = at("2026-09-20 23:59:59")
    assert ok(alice.post(path + "/resubmit"))["status"] == "resubmitted"
    criteria = {c["criterion"]: c for c in ok(operator.post(path + "/qualification"))}
    assert criteria["startup_priority"]["automatic"] == ""  # 2017: no longer a start-up
    assert statuses(alice, application_id) == [
        "submitted", "qualification", "supplement_requested", "resubmitted", "qualification",
    ]  # fmt: skip

    # the same deadline a second later
    clock.now = NOW
    late = submitted(bob, round_id, "24536806")
    ok(operator.post(f"/applications/{late}/qualification"))
    ok(operator.post(f"/applications/{late}/supplement-request", supplement), 201)
    clock.now = at("2026-09-21 00:00:00")
    change = {"changes": {"company.founding_date": "2019-05-01"}}
    refused(bob.post(f"/applications/{late}/supplement", change), 409, "deadline-passed")
    refused(bob.post(f"/applications/{late}/resubmit"), 409, "deadline-passed")

    # a criterion failed: rejected with the reason the company is told
    clock.now = NOW
    ok(operator.put(path + "/qualification/industry_codes", {"passed": False}))
    refused(operator.post(path + "/reject", {"reason": ""}), 422, "invalid")
    rejected = ok(operator.post(path + "/reject", {"reason": "行業代碼不符 / industry code"}))
    assert rejected["status"] == "rejected"
    assert ok(alice.get(f"/applications/{application_id}/history"))[-1]["reason"] == (
        "行業代碼不符 / industry code"
    )


def test_review_conflicts_recusal_score_sheets_aggregate_and_ranking(people):
    """Two reviewers per application in this service (``reviewers_per_application``)."""
    operator, alice = people["operator"], people["alice"]
    round_id = make_round(operator)
    application_id = qualified(operator, alice, round_id)
    path = f"/applications/{application_id}"
    # an obvious conflict: the reviewer works for the applicant (same business number)
    profile = {"affiliation": "新創應用有限公司", "business_number": "22099131"}
    refused(people["reviewer3"].put("/reviewers/reviewer3/profile", profile), 403, "forbidden")
    bad = refused(
        operator.put("/reviewers/reviewer3/profile", profile | {"business_number": "22099132"}),
        422,
        "invalid",
    )
    assert set(bad["errors"]) == {"business_number"}
    ok(operator.put("/reviewers/reviewer3/profile", profile))
    blocked = refused(
        operator.post(path + "/reviewers", {"reviewer": "reviewer3"}), 409, "conflict-of-interest"
    )
    assert "22099131" in blocked["message"]
    refused(operator.post(path + "/reviewers", {"reviewer": "alice"}), 422, "invalid")
    refused(operator.post(path + "/reviewers", {"reviewer": "nobody"}), 422, "invalid")
    refused(alice.post(path + "/reviewers", {"reviewer": "reviewer"}), 403, "forbidden")
    ok(operator.post(path + "/reviewers", {"reviewer": "reviewer"}), 201)
    ok(operator.post(path + "/reviewers", {"reviewer": "reviewer2"}), 201)
    refused(operator.post(path + "/reviewers", {"reviewer": "reviewer4"}), 409, "conflict")

    # reviewer2 declares a conflict: recused, the application closed to them
    assert [a["id"] for a in ok(people["reviewer2"].get("/review/assignments"))] == [application_id]
    refused(people["reviewer2"].post(path + "/conflict", {"reason": ""}), 422, "invalid")
    ok(people["reviewer2"].post(path + "/conflict", {"reason": "曾任顧問 / was an adviser"}))
    for response in (
        people["reviewer2"].get(path),
        people["reviewer2"].get(path + "/score-sheet"),
        people["reviewer2"].put(path + "/score-sheet", {"scores": TRAINING_SCORES}),
        people["reviewer2"].post(path + "/conflict", {"reason": "again"}),
    ):
        refused(response, 404, "not-found")
    assert ok(people["reviewer2"].get("/review/assignments")) == []
    refused(alice.get("/review/assignments"), 403, "forbidden")
    ok(operator.post(path + "/reviewers", {"reviewer": "reviewer4"}), 201)  # recused: not counted
    listed = ok(operator.get(path + "/reviewers"))
    assert [(a["reviewer"], a["recused_at"] is not None) for a in listed] == [
        ("reviewer", False), ("reviewer2", True), ("reviewer4", False),
    ]  # fmt: skip

    empty = ok(people["reviewer"].get(path + "/score-sheet"))
    assert (empty["scores"], empty["total"], empty["bonus_per_item"]) == (None, None, "2")
    assert empty["weights"] == {
        "importance": 30, "industry_application": 15, "dataset": 10,
        "model_resources": 20, "benefit": 15, "productisation": 10,
    }  # fmt: skip
    assert empty["bonus_items"] == ["open_model", "open_dataset", "registrations"]
    for scores, field in (
        (TRAINING_SCORES | {"importance": 101}, "scores.importance"),
        (TRAINING_SCORES | {"importance": 80.5}, "scores.importance"),
        ({"importance": 80}, "scores"),
    ):
        answer = refused(
            people["reviewer"].put(path + "/score-sheet", {"scores": scores}), 422, "invalid"
        )
        assert set(answer["errors"]) == {field}
    refused(alice.get(path + "/score-sheet"), 403, "forbidden")  # hers to read, not to score
    # 30×80 + 15×70 + 10×60 + 20×90 + 15×75 + 10×85 = 7825 → 78.25, three bonus items × 2
    sheet = {"scores": TRAINING_SCORES, "comment_to_applicant": "資料充足", "private_comment": "可"}
    assert ok(people["reviewer"].put(path + "/score-sheet", sheet))["total"] == "84.25"
    # every criterion 60: 60.00 + 6 = 66.00
    flat = dict.fromkeys(TRAINING_SCORES, 60)
    assert ok(people["reviewer4"].put(path + "/score-sheet", {"scores": flat}))["total"] == "66.00"
    refused(alice.get(path + "/aggregate"), 403, "forbidden")
    assert ok(operator.get(path + "/aggregate")) == {
        "application_id": application_id,
        "totals": ["84.25", "66.00"],
        "mean": "75.13",  # 150.25 / 2 = 75.125, half up
        "spread": "18.25",
        "sheets": 2,
        "expected": 2,
        "complete": True,
        "flagged": False,  # not beyond 20
    }

    second = qualified(operator, people["bob"], round_id, "24536806")
    for name in ("reviewer", "reviewer4"):
        ok(operator.post(f"/applications/{second}/reviewers", {"reviewer": name}), 201)
        ok(people[name].put(f"/applications/{second}/score-sheet", {"scores": flat}))
    refused(alice.get(f"/rounds/{round_id}/ranking"), 403, "forbidden")
    refused(operator.get("/rounds/999/ranking"), 404, "not-found")
    ranking = ok(operator.get(f"/rounds/{round_id}/ranking"))
    assert [(r["rank"], r["application_id"], r["mean"]) for r in ranking] == [
        (1, application_id, "75.13"), (2, second, "66.00"),
    ]  # fmt: skip

    refused(alice.post(path + "/decision", {"selected": True, "tier": "L2"}), 403, "forbidden")
    refused(
        people["reviewer"].post(path + "/decision", {"selected": True, "tier": "L2"}),
        403,
        "forbidden",
    )
    no_tier = refused(operator.post(path + "/decision", {"selected": True}), 422, "invalid")
    assert set(no_tier["errors"]) == {"tier"}
    refused(operator.post(path + "/decision", {"selected": True, "tier": "L4"}), 422, "invalid")
    decided = ok(
        operator.post(path + "/decision", {"selected": True, "tier": "L2", "note": "會議決議"})
    )
    assert (decided["status"], decided["tier"]) == ("selected", "L2")
    assert decided["comments_to_applicant"] == ["資料充足"]  # never the private one
    assert ok(alice.get(path))["comments_to_applicant"] == ["資料充足"]
    late = refused(
        people["reviewer"].put(path + "/score-sheet", {"scores": flat}),
        409,
        "transition-not-allowed",
    )
    assert "review is over" in late["message"]
    refused(
        operator.post(path + "/decision", {"selected": True, "tier": "L2"}),
        409,
        "transition-not-allowed",
    )


def selected(people, category: str, tier: str, business_number: str = "22099131") -> int:
    operator = people["operator"]
    application_id = qualified(
        operator, people["alice"], make_round(operator, category), business_number
    )
    scores = TRAINING_SCORES if category == "training" else INFERENCE_SCORES
    scored(people, application_id, {"reviewer": scores, "reviewer4": scores})
    decision = {"selected": True, "tier": tier} if category == "training" else {"tier": tier}
    assert (
        ok(operator.post(f"/applications/{application_id}/decision", decision))["status"]
        == "selected"
    )
    return application_id


def test_a_training_award_with_trusted_networks_points_window_and_members(people, session_factory):
    operator, alice = people["operator"], people["alice"]
    application_id = selected(people, "training", "L2")
    path = f"/applications/{application_id}/award"
    award = {
        "notice_date": "2026-12-01",
        "trusted_networks": ["203.0.113.7", "198.51.100.0/24", "2001:db8::/48"],
        "trainees": ["trainee1@startup.example.tw"],
    }
    # only operators award, and an operator's script token is not an operator
    for who in ("alice", "reviewer", "operator-script"):
        refused(people[who].post(path, award), 403, "forbidden")
    for change, field in (
        ({"trusted_networks": []}, "trusted_networks"),
        ({"trusted_networks": ["10.0.0.1/8"]}, "trusted_networks"),  # host bits: a typo
        ({"trainees": ["not-an-address"]}, "trainees"),
        ({"notice_date": "2026/13/01"}, "notice_date"),
    ):
        assert set(refused(operator.post(path, award | change), 422, "invalid")["errors"]) == {
            field
        }
    answer = operator.post(path, award)
    result = ok(answer, 201)
    assert answer.headers["Cache-Control"] == "no-store" and result["api_key"] is None
    given = result["award"]
    assert (given["tier"], given["points"], given["category"]) == ("L2", 2000, "training")
    assert (given["window_start"], given["window_end"]) == (
        "2026-12-01T00:00:00+08:00",
        "2027-03-01T00:00:00+08:00",
    )
    assert given["trusted_networks"] == ["203.0.113.7/32", "198.51.100.0/24", "2001:db8::/48"]
    assert [(m["email"], m["role"]) for m in given["members"]] == [
        ("lead@startup.example.tw", "lead"),
        ("contact@startup.example.tw", "contact"),
        ("trainee1@startup.example.tw", "trainee"),
    ]
    assert given["members"][0]["username"] == LEAD
    with session_factory() as db:
        granted = db.scalars(
            select(LedgerEntry.amount_millipoints).where(
                LedgerEntry.project_id == given["project_id"]
            )
        )
        assert list(granted) == [2_000_000]
    refused(operator.post(path, award), 409, "transition-not-allowed")  # nothing twice
    assert statuses(alice, application_id)[-2:] == ["selected", "awarded"]
    assert ok(alice.get(f"/applications/{application_id}"))["project_id"] == given["project_id"]

    project = f"/projects/{given['project_id']}/award"
    assert ok(people[LEAD].get(project))["tier"] == "L2"  # a member reads it
    refused(people["bob"].get(project), 404, "not-found")
    refused(
        people[LEAD].put(project + "/trusted-networks", {"trusted_networks": ["192.0.2.0/24"]}),
        403,
        "forbidden",
    )
    saved = ok(operator.put(project + "/trusted-networks", {"trusted_networks": ["192.0.2.0/24"]}))
    assert saved == {"trusted_networks": ["192.0.2.0/24"]}
    refused(
        operator.put(project + "/trusted-networks", {"trusted_networks": ["x"]}), 422, "invalid"
    )
    refused(people[LEAD].post(project + "/api-key"), 409, "conflict")  # training: no API key
    refused(operator.get("/projects/999/award"), 404, "not-found")

    # the lead adds a trainee after the award; bob (no member) cannot, nor can a bad address
    refused(people["bob"].post(project + "/trainees", {"trainees": ["x@b.tw"]}), 403, "forbidden")
    bad = refused(people[LEAD].post(project + "/trainees", {"trainees": ["nope"]}), 422, "invalid")
    assert set(bad["errors"]) == {"trainees"}
    joined = ok(people[LEAD].post(project + "/trainees", {"trainees": ["mei@startup.example.tw"]}))
    assert joined["added"] == [awards.username_for_email("mei@startup.example.tw")]
    assert ("mei@startup.example.tw", "trainee") in [
        (m["email"], m["role"]) for m in joined["award"]["members"]
    ]
    again = ok(operator.post(project + "/trainees", {"trainees": ["mei@startup.example.tw"]}))
    assert again["added"] == []


def test_an_inference_award_shows_its_key_once_and_only_operators_revoke(people, session_factory):
    operator = people["operator"]
    application_id = selected(people, "inference", "L1")
    # 25×81 + 25×77 + 20×68 + 20×90 + 10×55 = 7660 → 76.60, three bonus items × 2 = 82.60 ≥ 70
    assert ok(operator.get(f"/applications/{application_id}/aggregate"))["mean"] == "82.60"
    result = ok(
        operator.post(f"/applications/{application_id}/award", {"notice_date": "2026-12-01"}), 201
    )
    key, given = result["api_key"], result["award"]
    assert re.fullmatch(r"aip_[A-Za-z0-9_-]{43}", key)
    assert given["api_key"]["prefix"] == key[:12] and given["points"] == 1000
    with session_factory() as db:
        stored = db.scalars(select(ApiKey)).one()
        assert stored.key_hash == hashlib.sha256(key.encode()).hexdigest()
        assert key not in {stored.key_hash, stored.prefix}
    project = f"/projects/{given['project_id']}/award"
    # shown once: never in what is read later
    assert key not in people[LEAD].get(project).text and key not in operator.get(project).text

    refused(people["alice"].post(project + "/api-key"), 403, "forbidden")  # not the lead
    renewed = people[LEAD].post(project + "/api-key")
    new_key = ok(renewed, 201)["api_key"]
    assert new_key != key and renewed.headers["Cache-Control"] == "no-store"
    with session_factory() as db:
        active = db.scalars(select(ApiKey.key_hash).where(ApiKey.revoked_at.is_(None))).all()
        assert active == [hashlib.sha256(new_key.encode()).hexdigest()]
    refused(people[LEAD].delete(project + "/api-key"), 403, "forbidden")
    refused(people["operator-script"].delete(project + "/api-key"), 403, "forbidden")
    assert ok(operator.delete(project + "/api-key")) == {"revoked": 1}
    assert ok(operator.delete(project + "/api-key")) == {"revoked": 0}
    assert ok(operator.get(project))["api_key"] is None
    refused(
        operator.put(project + "/trusted-networks", {"trusted_networks": ["192.0.2.0/24"]}),
        409,
        "conflict",
    )


def test_an_inference_application_below_the_pass_mark_is_rejected(people):
    operator = people["operator"]
    application_id = qualified(operator, people["alice"], make_round(operator, "inference"))
    low = dict.fromkeys(INFERENCE_SCORES, 50)  # 50.00 + 6 = 56.00 < 70
    path = f"/applications/{application_id}"
    ok(operator.post(path + "/reviewers", {"reviewer": "reviewer"}), 201)
    ok(people["reviewer"].put(path + "/score-sheet", {"scores": low}))
    incomplete = refused(operator.post(path + "/decision", {"tier": "L1"}), 409, "conflict")
    assert "1/2" in incomplete["message"]
    scored(people, application_id, {"reviewer4": low})
    decided = ok(operator.post(path + "/decision", {"tier": "L1"}))
    assert decided["status"] == "rejected"
    assert "56.00" in ok(people["alice"].get(path + "/history"))[-1]["reason"]
