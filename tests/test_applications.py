"""Applications through the service layer: drafts, submission at the deadline's edges, every
transition allowed and refused, qualification with evidence, supplements and their expiry,
permissions."""

from __future__ import annotations

import json
from datetime import date

import pytest
from sqlalchemy import func, select

from quota_service import applications as apps
from quota_service.models import (
    Application,
    ApplicationStatus,
    ApplicationStatusChange,
    AuditEvent,
    Notice,
)
from tests import application_samples as sample
from tests.application_flow import NOW, filled, make_round, people, qualified, submitted
from tests.conftest import at

S = ApplicationStatus


@pytest.fixture
def world(db):
    p = people(db)
    p["round"] = make_round(db, p["operator"])
    return p


def statuses(db, application) -> list[tuple[str, str]]:
    return [
        (c.old_status, c.new_status)
        for c in db.scalars(
            select(ApplicationStatusChange)
            .where(ApplicationStatusChange.application_id == application.id)
            .order_by(ApplicationStatusChange.id)
        )
    ]


def test_the_transitions_table():
    # every status is in the table, final ones lead nowhere, withdrawal is open until the end
    assert set(apps.TRANSITIONS) == set(S)
    assert apps.FINAL == {S.AWARDED, S.REJECTED, S.WITHDRAWN}
    for status, targets in apps.TRANSITIONS.items():
        assert (S.WITHDRAWN in targets) == (status not in apps.FINAL)


def test_every_transition_allowed_or_refused(db, world):
    application = filled(db, world["a"], world["round"])
    tried = 0
    for old in S:
        for new in S:
            application.status = old
            application.open_key = application.business_number
            db.flush()
            tried += 1
            if new in apps.TRANSITIONS[old]:
                apps.change_status(db, application, new, actor="op", reason="t", now=NOW)
                assert application.status == new
                assert (application.open_key is None) == (new in apps.CLOSED)
            else:
                with pytest.raises(apps.TransitionNotAllowed):
                    apps.change_status(db, application, new, actor="op", reason="t", now=NOW)
                assert application.status == old
    assert tried == len(S) ** 2
    allowed = sum(len(t) for t in apps.TRANSITIONS.values())
    assert len(statuses(db, application)) == allowed  # one history row per allowed change


def test_a_change_writes_history_and_audit_in_the_same_transaction(session_factory):
    from quota_service import db as database

    with database.transaction(session_factory) as db:
        p = people(db)
        round_ = make_round(db, p["operator"])
        application_id = filled(db, p["a"], round_).id
    with pytest.raises(RuntimeError), database.transaction(session_factory) as db:
        application = db.get(Application, application_id)
        apps.submit(db, db.merge(p["a"]), application, now=NOW)
        raise RuntimeError("the request fails after the change")
    with database.transaction(session_factory) as db:
        assert db.get(Application, application_id).status == S.DRAFT
        assert db.scalar(select(func.count()).select_from(ApplicationStatusChange)) == 0
        assert db.scalar(select(func.count()).where(AuditEvent.action == "application.status")) == 0
        apps.submit(db, db.merge(p["a"]), db.get(Application, application_id), now=NOW)
    with database.transaction(session_factory) as db:
        event = db.scalar(select(AuditEvent).where(AuditEvent.action == "application.status"))
        assert (event.actor, json.loads(event.detail)["old"], json.loads(event.detail)["new"]) == (
            "alice",
            "draft",
            "submitted",
        )


def test_a_draft_keeps_what_was_typed_and_resumes(db, world):
    application = apps.create_draft(db, world["a"], world["round"], now=NOW)
    company = sample.company("22099132", founding_date="2019-02-30")
    errors = apps.save_draft(db, world["a"], application, company=company, now=NOW)
    assert "company.business_number" in errors and "company.founding_date" in errors
    assert "proposal.title" in errors  # not filled yet
    db.expire_all()
    resumed = apps.get(db, world["a"], application.id)
    docs = apps.documents(resumed)
    assert docs["company"]["business_number"] == "22099132"
    assert docs["company"]["founding_date"] == "2019-02-30"
    # a later save of another part keeps the company part
    apps.save_draft(
        db,
        world["a"],
        resumed,
        proposal=sample.training(),
        consent=sample.CONSENT,
        declarations=sample.DECLARATIONS,
        now=NOW,
    )
    assert apps.documents(resumed)["company"] == company
    with pytest.raises(apps.ValidationFailed) as failed:
        apps.submit(db, world["a"], resumed, now=NOW)
    assert set(failed.value.errors) == {"company.business_number", "company.founding_date"}
    assert resumed.status == S.DRAFT


@pytest.mark.parametrize(
    "moment,ok",
    [
        ("2026-10-30 23:59:00", True),
        ("2026-10-30 23:59:59", True),
        ("2026-10-31 00:00:00", False),
        ("2026-11-02 09:00:00", False),
        ("2026-07-31 23:59:59", False),  # before the round opens
    ],
)
def test_the_deadline_by_the_server_clock_in_taipei(db, world, moment, ok):
    application = filled(db, world["a"], world["round"])
    if ok:
        apps.submit(db, world["a"], application, now=at(moment))
        assert application.status == S.SUBMITTED
        assert application.submitted_at == at(moment)
    else:
        with pytest.raises(apps.DeadlinePassed):
            apps.submit(db, world["a"], application, now=at(moment))
        assert application.status == S.DRAFT


def test_a_double_submit_creates_nothing_twice(db, world):
    application = submitted(db, world["a"], world["round"])
    with pytest.raises(apps.TransitionNotAllowed):
        apps.submit(db, world["a"], application, now=NOW)
    assert statuses(db, application) == [("draft", "submitted")]


def test_one_open_application_per_company_round_and_category(db, world):
    first = submitted(db, world["a"], world["round"])
    with pytest.raises(apps.ApplicationError, match="22099131"):
        filled(db, world["b"], world["round"])  # another person, same company
    # a different category's round is another place
    inference = make_round(db, world["operator"], "inference")
    assert filled(db, world["b"], inference, business_number="22099131").open_key == "22099131"
    # once withdrawn, the place is free again
    apps.withdraw(db, world["a"], first, reason="改申請推論", now=NOW)
    again = filled(db, world["a"], world["round"])
    assert again.open_key == "22099131"


def test_the_database_constraint_holds_without_the_check(db, world):
    from sqlalchemy.exc import IntegrityError

    submitted(db, world["a"], world["round"])
    other = apps.create_draft(db, world["b"], world["round"], now=NOW)
    other.open_key = "22099131"
    with pytest.raises(IntegrityError):
        db.flush()
    db.rollback()


def test_automatic_checks_with_evidence(db, world):
    proposal = sample.training()
    proposal["container"]["base_model"] = "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
    application = submitted(db, world["a"], world["round"], proposal=proposal)
    assert application.startup_priority  # founded 2019-05-01
    apps.start_qualification(db, world["operator"], application, now=NOW)
    rows = {r["criterion"]: r for r in apps.qualification(db, world["operator"], application)}
    assert rows["business_number"]["automatic"] == "pass"
    assert rows["business_number"]["evidence"]["business_number"] == "22099131"
    assert rows["industry_codes"]["evidence"]["industry_codes"] == ["J62", "J63"]
    assert rows["banned_models"]["automatic"] == "flag"
    finding = rows["banned_models"]["evidence"]["findings"][0]
    assert (finding["rule"], finding["field"]) == ("deepseek", "base_model")
    assert rows["not_china_invested"]["automatic"] == ""  # a declaration: the operator decides
    assert rows["startup_priority"]["automatic"] == "flag"
    assert all(r["passed"] is None for r in rows.values())


def test_founded_before_2018_has_no_priority_and_a_clean_proposal_no_flag(db, world):
    application = filled(db, world["a"], world["round"])
    apps.save_draft(
        db, world["a"], application, company=sample.company(founding_date="2017-12-31"), now=NOW
    )
    apps.submit(db, world["a"], application, now=NOW)
    assert not application.startup_priority
    checks = apps.automatic_checks(application)
    assert checks["banned_models"] == ("pass", {"findings": []})
    # the edge: 2018-01-01 is in
    application.company_data = json.dumps(sample.company(founding_date="2018-01-01"))
    assert apps.automatic_checks(application)["startup_priority"][0] == "flag"


def test_qualification_passes_only_with_every_criterion_passed(db, world):
    application = submitted(db, world["a"], world["round"])
    op = world["operator"]
    with pytest.raises(apps.TransitionNotAllowed):  # not in qualification yet
        apps.record_criterion(db, op, application, "consent", True, now=NOW)
    apps.start_qualification(db, op, application, now=NOW)
    for criterion in apps.CRITERIA[:-1]:
        apps.record_criterion(db, op, application, criterion, True, now=NOW)
    with pytest.raises(apps.ApplicationError, match="banned_models"):
        apps.qualify(db, op, application, now=NOW)
    apps.record_criterion(db, op, application, "banned_models", True, note="Llama", now=NOW)
    apps.qualify(db, op, application, now=NOW)
    assert application.status == S.PROFESSIONAL_REVIEW


def test_failed_qualification_rejects_and_tells_the_applicant(db, world):
    application = submitted(db, world["a"], world["round"])
    op = world["operator"]
    apps.start_qualification(db, op, application, now=NOW)
    with pytest.raises(apps.ApplicationError):  # nothing recorded as failed yet
        apps.reject(db, op, application, reason="分公司", now=NOW)
    apps.record_criterion(db, op, application, "not_branch_office", False, note="分公司", now=NOW)
    apps.reject(db, op, application, reason="為外國公司分公司", now=NOW)
    assert application.status == S.REJECTED and application.open_key is None
    notice = db.scalar(select(Notice).where(Notice.application_id == application.id))
    assert notice.kind == apps.RESULT_NOTICE and notice.project_id is None
    assert "為外國公司分公司" in notice.body
    assert notice.recipients == (
        "lead@startup.example.tw,contact@startup.example.tw,alice@startup.example.tw"
    )


def supplement_requested(db, world, due=date(2026, 11, 10)):
    application = submitted(db, world["a"], world["round"])
    apps.start_qualification(db, world["operator"], application, now=NOW)
    request = apps.request_supplement(
        db,
        world["operator"],
        application,
        fields=["company.founding_date", "proposal.dataset"],
        message="請附設立日期與資料量",
        due_day=due,
        now=NOW,
    )
    return application, request


def test_supplement_changes_only_the_listed_fields(db, world):
    application, request = supplement_requested(db, world)
    assert request.due_before == at("2026-11-11 00:00:00")
    notice = db.scalar(select(Notice).where(Notice.kind == apps.SUPPLEMENT_NOTICE))
    assert "2026-11-10 23:59:59" in notice.body and "company.founding_date" in notice.body
    a = world["a"]
    with pytest.raises(apps.PermissionDenied, match="company.name"):
        apps.supplement(db, a, application, {"company.name": "改名"}, now=NOW)
    assert apps.documents(application)["company"]["name"] == "新創應用有限公司"
    errors = apps.supplement(
        db,
        a,
        application,
        {"company.founding_date": "2020-03-01", "proposal.dataset.text_tokens": "9,000"},
        now=NOW,
    )
    assert errors == {}
    docs = apps.documents(application)
    assert docs["company"]["founding_date"] == "2020-03-01"
    assert docs["proposal"]["dataset"]["text_tokens"] == "9,000"
    with pytest.raises(apps.PermissionDenied):
        apps.supplement(db, world["b"], application, {"company.founding_date": "x"}, now=NOW)
    apps.resubmit(db, a, application, now=at("2026-11-10 23:59:59"))
    assert application.status == S.RESUBMITTED
    # back to the operator, whose earlier decisions are kept where the evidence is unchanged
    apps.start_qualification(db, world["operator"], application, now=NOW)
    assert application.status == S.QUALIFICATION


def test_a_supplement_that_fails_validation_cannot_be_resubmitted(db, world):
    application, _ = supplement_requested(db, world)
    errors = apps.supplement(db, world["a"], application, {"company.founding_date": "x"}, now=NOW)
    assert "company.founding_date" in errors
    with pytest.raises(apps.ValidationFailed):
        apps.resubmit(db, world["a"], application, now=NOW)
    assert application.status == S.SUPPLEMENT_REQUESTED


def test_supplement_expiry_withdraws_once_and_says_so(db, world):
    application, request = supplement_requested(db, world)
    assert apps.expire_supplements(db, now=at("2026-11-10 23:59:59")) == []
    assert application.status == S.SUPPLEMENT_REQUESTED
    with pytest.raises(apps.DeadlinePassed):
        apps.resubmit(db, world["a"], application, now=at("2026-11-11 00:00:00"))
    with pytest.raises(apps.DeadlinePassed):
        apps.supplement(
            db,
            world["a"],
            application,
            {"company.founding_date": "2020-01-01"},
            now=at("2026-11-11 00:00:00"),
        )
    assert apps.expire_supplements(db, now=at("2026-11-11 00:00:00")) == [application.id]
    assert apps.expire_supplements(db, now=at("2026-11-12 00:00:00")) == []  # idempotent
    assert application.status == S.WITHDRAWN and request.expired_at == at("2026-11-11 00:00:00")
    last = apps.history(db, world["a"], application.id)[-1]
    assert (last.actor, last.new_status) == ("system", "withdrawn")
    assert "補件逾期" in last.reason and "treated as withdrawn" in last.reason
    notices = db.scalars(select(Notice).where(Notice.kind == apps.RESULT_NOTICE)).all()
    assert len(notices) == 1 and "視同撤案" in notices[0].body


def test_the_applicant_sees_the_whole_history(db, world):
    application, _ = supplement_requested(db, world)
    assert [(c.old_status, c.new_status) for c in apps.history(db, world["a"], application.id)] == [
        ("draft", "submitted"),
        ("submitted", "qualification"),
        ("qualification", "supplement_requested"),
    ]


def test_applicant_a_cannot_read_or_change_bs_application(db, world):
    application = filled(db, world["a"], world["round"])
    with pytest.raises(apps.PermissionDenied):
        apps.get(db, world["b"], application.id)
    with pytest.raises(apps.PermissionDenied):
        apps.history(db, world["b"], application.id)
    with pytest.raises(apps.PermissionDenied):
        apps.save_draft(db, world["b"], application, company={}, now=NOW)
    with pytest.raises(apps.PermissionDenied):
        apps.submit(db, world["b"], application, now=NOW)
    with pytest.raises(apps.PermissionDenied):
        apps.withdraw(db, world["b"], application, reason="x", now=NOW)
    # a reviewer not assigned cannot read it either; an operator can
    with pytest.raises(apps.PermissionDenied):
        apps.get(db, world["r1"], application.id)
    assert apps.get(db, world["operator"], application.id) is application
    assert [s.id for s in apps.mine(db, world["b"])] == []


def test_only_operators_run_the_review(db, world):
    application = submitted(db, world["a"], world["round"])
    for who in (world["a"], world["r1"]):
        with pytest.raises(apps.PermissionDenied):
            apps.start_qualification(db, who, application, now=NOW)
        with pytest.raises(apps.PermissionDenied):
            apps.create_round(
                db, who, name="x", category="training", opens_at=NOW, closes_at=NOW, now=NOW
            )
    apps.start_qualification(db, world["operator"], application, now=NOW)
    with pytest.raises(apps.PermissionDenied):
        apps.record_criterion(db, world["a"], application, "consent", True, now=NOW)
    with pytest.raises(apps.PermissionDenied):
        apps.request_supplement(
            db,
            world["a"],
            application,
            fields=["company.name"],
            message="",
            due_day=date(2026, 12, 1),
            now=NOW,
        )


def test_qualified_reaches_professional_review(db, world):
    application = qualified(db, world["operator"], world["a"], world["round"])
    assert statuses(db, application)[-1] == ("qualification", "professional_review")
