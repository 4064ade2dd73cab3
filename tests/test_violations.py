"""The violations register and sanctions, through the service layer, on a project awarded by
the real application flow (an inference project: its company has an API key).

Times are Asia/Taipei wall clock (``at``). Storage is real folders under tmp_path.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import re
from datetime import date

import pytest
import yaml
from sqlalchemy import select

from quota_service import (
    access,
    awards,
    lifecycle,
    metering,
    model_scans,
    network,
    sanctions,
    violation_pages,
    violations,
)
from quota_service import applications as apps
from quota_service.handlers import OPENAPI
from quota_service.models import (
    Account,
    AuditEvent,
    Membership,
    Notice,
    Project,
    ProjectStatus,
    Purge,
    SanctionKind,
    SanctionStatus,
    ViolationStatus,
)
from tests import application_samples as sample
from tests.application_flow import people
from tests.conftest import at
from tests.test_awards import selected

V, SS = ViolationStatus, SanctionStatus
AWARDED = at("2026-12-01 10:00:00")
NOW = at("2026-12-20 10:00:00")


@pytest.fixture
def world(db):
    """An inference project awarded on 2026-12-01: lead and contact from the application."""
    w = people(db)
    w["inference"] = apps.create_round(
        db, w["operator"], name="115-1 推論", category="inference", opens_at=at("2026-08-01"),
        closes_at=at("2026-10-31"), now=at("2026-08-01"),
    )  # fmt: skip
    proposal = sample.inference(preset_models=["deepseek-ai/DeepSeek-R1"])
    w["application"] = selected(db, w, "inference", "L1", proposal=proposal)
    result = awards.award(
        db, w["operator"], w["application"], notice_date=date(2026, 12, 1), now=AWARDED
    )
    w["project"], w["api_key"] = result.project, result.api_key
    members = dict(
        db.execute(
            select(Membership.role, Account)
            .join(Account)
            .where(Membership.project_id == result.project.id)
        ).all()
    )
    w["lead"], w["contact"] = members["lead"], members["contact"]
    return w


def record(db, w, summary="挖礦程式 / a mining process", kind="prohibited_use", when=NOW):
    return violations.record(
        db, w["project"], kind, summary=summary, evidence={"process": "xmrig"},
        actor=w["operator"].username, now=when,
    )  # fmt: skip


def notices(db, kind=violations.VIOLATION_NOTICE) -> list[tuple[str, str]]:
    return [
        (n.key, n.recipients)
        for n in db.scalars(select(Notice).where(Notice.kind == kind).order_by(Notice.id))
    ]


def audit_actions(db, subject_type: str) -> list[tuple[str, dict]]:
    rows = db.scalars(
        select(AuditEvent).where(AuditEvent.subject_type == subject_type).order_by(AuditEvent.id)
    )
    return [(e.action, json.loads(e.detail)) for e in rows]


# ---- the register --------------------------------------------------------------------------


def test_the_transition_tables():
    allowed = {(o, n) for o, targets in violations.TRANSITIONS.items() for n in targets}
    assert allowed == {
        (V.RECORDED, V.APPEALED),
        (V.RECORDED, V.UPHELD),
        (V.RECORDED, V.WITHDRAWN),
        (V.APPEALED, V.UPHELD),
        (V.APPEALED, V.WITHDRAWN),
    }
    assert {
        (k, o, n) for (k, o), targets in violations.SANCTION_TRANSITIONS.items() for n in targets
    } == {
        (SanctionKind.SUSPEND, SS.ACTIVE, SS.LIFTED),
        (SanctionKind.BAR_NEXT_ROUND, SS.ACTIVE, SS.USED),
        (SanctionKind.BAR_NEXT_ROUND, SS.ACTIVE, SS.LIFTED),
        (SanctionKind.TERMINATE, SS.ACTIVE, SS.COMPLETED),
    }


def test_a_recorded_violation_has_its_evidence_history_audit_row_and_notice(db, world):
    violation = record(db, world)
    assert (violation.status, violation.kind, violation.recorded_by) == (
        "recorded", "prohibited_use", "op",
    )  # fmt: skip
    assert violation.recorded_at == NOW and violation.company_id == world["project"].company_id
    [(action, detail)] = audit_actions(db, "violation")
    assert action == "violation.record" and detail["evidence"] == {"process": "xmrig"}
    assert notices(db) == [(f"{violation.id}-recorded", "contact@startup.example.tw")]
    notice = db.scalar(select(Notice).where(Notice.kind == violations.VIOLATION_NOTICE))
    assert "貴公司目前累計 1 筆違規" in notice.body and "1 violation(s) on record" in notice.body
    assert f"/services/quota/violations/{violation.id}" in notice.body
    assert notices(db, violations.OPERATOR_NOTICE) == []  # an operator recorded it
    view = violations.view(db, violation, operator=False)
    assert [(h["kind"], h["new_status"], h["text"]) for h in view["history"]] == [
        ("status", "recorded", "挖礦程式 / a mining process")
    ]
    with pytest.raises(violations.RegisterError) as empty:
        record(db, world, summary="  ")
    assert empty.value.field == "summary"
    with pytest.raises(violations.RegisterError) as unknown:
        record(db, world, kind="jaywalking")
    assert unknown.value.field == "kind"


def test_only_the_projects_members_appeal_and_an_appeal_holds_the_count(db, world):
    violation = record(db, world)
    company = world["project"].company_id
    assert violations.counted_against(db, company) == [violation]
    with pytest.raises(violations.NotAllowed):  # the applicant is not a member of the project
        violations.appeal(db, violation, world["a"], text="不是我們", now=NOW)
    violations.appeal(db, violation, world["contact"], text="那是壓力測試 / a load test", now=NOW)
    assert violation.status == "appealed" and violations.counted_against(db, company) == []
    assert notices(db, violations.OPERATOR_NOTICE) == [
        (f"{violation.id}-appealed", "op@aipower.example.tw")
    ]
    with pytest.raises(violations.Conflict):  # one appeal
        violations.appeal(db, violation, world["lead"], text="再申訴", now=NOW)
    with pytest.raises(violations.NotAllowed):
        violations.decide(db, violation, world["contact"], "withdrawn", reason="x", now=NOW)
    with pytest.raises(violations.RegisterError) as no_reason:
        violations.decide(db, violation, world["operator"], "upheld", reason=" ", now=NOW)
    assert no_reason.value.field == "reason" and violation.status == "appealed"
    violations.decide(db, violation, world["operator"], "upheld", reason="日誌顯示挖礦", now=NOW)
    assert (violation.status, violation.decided_by, violation.decided_at) == ("upheld", "op", NOW)
    assert violations.counted_against(db, company) == [violation]
    with pytest.raises(violations.Conflict):  # upheld is final
        violations.decide(db, violation, world["operator"], "withdrawn", reason="x", now=NOW)
    assert [a for a, _ in audit_actions(db, "violation")] == [
        "violation.record", "violation.status", "violation.status",
    ]  # fmt: skip


def test_internal_notes_stay_with_the_operators(db, world):
    violation = record(db, world)
    op = world["operator"]
    violations.add_note(db, violation, op, text="待查 IP 紀錄", internal=True, now=NOW)
    told = violations.add_note(db, violation, op, text="請提供日誌 / send the logs", internal=False, now=NOW)  # fmt: skip
    member_view = violations.view(db, violation, operator=False)
    operator_view = violations.view(db, violation, operator=True)
    assert [h["text"] for h in member_view["history"]][1:] == ["請提供日誌 / send the logs"]
    assert [h["text"] for h in operator_view["history"]][1:] == ["待查 IP 紀錄", "請提供日誌 / send the logs"]  # fmt: skip
    assert [k for k, _ in notices(db)] == [f"{violation.id}-recorded", f"{violation.id}-note-{told.id}"]  # fmt: skip
    with pytest.raises(violations.NotAllowed):
        violations.add_note(db, violation, world["lead"], text="x", internal=False, now=NOW)
    assert violations.readable(db, world["lead"].username, operator=False) == [violation]
    assert violations.readable(db, "alice", operator=False) == []
    assert violations.may_read(db, violation, "alice", operator=False) is False


# ---- evidence in one step ------------------------------------------------------------------


def refused(db, username: str, address: str, when) -> int:
    refusal = network.region_refusal(ipaddress.ip_address(address))
    event = network.record_refusal(
        db, refusal, username=username, attempt="GET /hub/home", actor=username, now=when
    )
    db.flush()
    return event.id


def test_recorded_refusals_become_a_violation_with_that_evidence(db, world):
    lead = world["lead"].username
    first = refused(db, lead, "1.2.4.8", at("2026-12-10 21:00:00"))
    second = refused(db, lead, "203.198.7.66", at("2026-12-11 08:30:00"))
    stranger = refused(db, "alice", "114.114.114.114", at("2026-12-11 09:00:00"))
    listed = violations.recorded_refusals(db)
    assert [(r["audit_event_id"], r["country"], r["violation_id"]) for r in listed] == [
        (stranger, "CN", None), (second, "HK", None), (first, "CN", None),
    ]  # fmt: skip
    project, evidence = violations.from_refusals(db, [second, first])
    assert project.id == world["project"].id
    assert [(r["audit_event_id"], r["address"], r["at"]) for r in evidence["refusals"]] == [
        (first, "1.2.4.8", "2026-12-10T21:00:00+08:00"),
        (second, "203.198.7.66", "2026-12-11T08:30:00+08:00"),
    ]
    violation = violations.record(
        db, project, "banned_region", summary="自中港澳連線兩次", evidence=evidence, actor="op",
        now=NOW,
    )  # fmt: skip
    assert {r["audit_event_id"]: r["violation_id"] for r in violations.recorded_refusals(db)} == {
        first: violation.id, second: violation.id, stranger: None,
    }  # fmt: skip
    with pytest.raises(violations.Conflict):  # cited once
        violations.from_refusals(db, [first])
    with pytest.raises(violations.RegisterError) as not_theirs:  # alice has no project
        violations.from_refusals(db, [stranger])
    assert not_theirs.value.field == "project_id"
    with pytest.raises(violations.RegisterError) as not_a_refusal:
        violations.from_refusals(db, [violation.id + 10_000])
    assert not_a_refusal.value.field == "refusals"
    # a withdrawn violation frees its evidence
    violations.decide(db, violation, world["operator"], "withdrawn", reason="VPN 出口誤判", now=NOW)
    assert violations.from_refusals(db, [first])[0].id == project.id


def test_a_storage_scan_with_findings_becomes_a_violation(db, world, tmp_path):
    contact = world["contact"].username
    due = model_scans.Due(contact, (world["project"].id,), ("新創應用有限公司",))
    finding = {"rule": "qwen", "maker": "Alibaba Qwen (通義千問)", "field": "architectures",
               "value": "Qwen2ForCausalLM", "matched": "architecture Qwen2ForCausalLM",
               "path": "qwen2-7b/config.json"}  # fmt: skip
    home = str(tmp_path)
    nothing_found = {"findings": [], "model_folders": []}
    model_scans.record_scan(db, due, home, nothing_found, home_found=True, now=NOW)
    model_scans.record_scan(
        db, due, home, {"findings": [finding]}, home_found=True, now=at("2026-12-21")
    )
    db.flush()
    [flagged] = violations.flagged_scans(db)
    assert (flagged["username"], flagged["findings"], flagged["violation_id"]) == (
        contact, [finding], None,
    )  # fmt: skip
    clean = flagged["audit_event_id"] - 1
    with pytest.raises(violations.RegisterError) as nothing:
        violations.from_scans(db, [clean])
    assert nothing.value.field == "scans"
    project, evidence = violations.from_scans(db, [flagged["audit_event_id"]])
    assert project.id == world["project"].id and evidence["scans"][0]["findings"] == [finding]


def test_an_applications_banned_model_findings_become_evidence(db, world):
    project, evidence = violations.from_application(db, world["application"].id)
    assert project.id == world["project"].id
    assert [(f["rule"], f["value"]) for f in evidence["findings"]] == [
        ("deepseek", "deepseek-ai/DeepSeek-R1")
    ]


# ---- sanctions -------------------------------------------------------------------------------


def running_server(db, world):
    request = metering.ServerRequest(world["lead"].username, "", "nvidia", 1, [], True)
    return metering.open_session(db, request, now=at("2026-12-20 09:00:00"), interval_seconds=60)


def test_suspension_stops_the_servers_and_lifting_resumes_the_project(db, world):
    violation = record(db, world)
    running_server(db, world)
    op = world["operator"]
    with pytest.raises(violations.NotAllowed):
        sanctions.impose(db, violation, "suspend", world["lead"], reason="x", now=NOW)
    suspension = sanctions.impose(db, violation, "suspend", op, reason="調查中", now=NOW)
    project = world["project"]
    assert project.status == "suspended" and suspension.status == "active"
    [order] = metering.meter(db, now=at("2026-12-20 10:01:00"))
    assert order.reason is access.SUSPENDED
    assert access.decide(db, world["lead"].username, NOW).refusal is access.SUSPENDED
    with pytest.raises(violations.Conflict):
        sanctions.impose(db, violation, "suspend", op, reason="again", now=NOW)
    with pytest.raises(violations.Conflict):  # withdrawing waits for the lift
        violations.decide(db, violation, op, "withdrawn", reason="誤判", now=NOW)
    sanctions.lift(db, suspension, op, reason="已改善", now=at("2026-12-22 10:00:00"))
    assert (project.status, suspension.status, suspension.end_reason) == (
        "approved",
        "lifted",
        "已改善",
    )
    assert access.decide(db, world["lead"].username, at("2026-12-22 10:00:01")).may_spawn
    with pytest.raises(violations.Conflict):
        sanctions.lift(db, suspension, op, reason="twice", now=NOW)
    assert [k for k, _ in notices(db)][1:] == [
        f"sanction-{suspension.id}-imposed", f"sanction-{suspension.id}-lifted",
    ]  # fmt: skip
    statuses = [d for a, d in audit_actions(db, "project") if a == "project.status"]
    assert [(d["old"], d["new"]) for d in statuses][-2:] == [
        ("approved", "suspended"), ("suspended", "approved"),
    ]  # fmt: skip


def test_termination_needs_two_counted_violations_or_an_urgent_reason(db, world):
    op = world["operator"]
    first = record(db, world)
    with pytest.raises(violations.RegisterError) as one:
        sanctions.impose(db, first, "terminate", op, reason="終止", now=NOW)
    assert one.value.field == "urgent_reason" and "1 violation(s)" in str(one.value)
    second = record(db, world, summary="轉售算力 / resale", when=at("2026-12-21 10:00:00"))
    violations.appeal(db, second, world["contact"], text="沒有轉售", now=at("2026-12-21 11:00:00"))
    with pytest.raises(violations.RegisterError):  # the appeal holds the second one
        sanctions.impose(db, second, "terminate", op, reason="終止", now=NOW)
    violations.decide(db, second, op, "upheld", reason="發票為證", now=at("2026-12-22 10:00:00"))
    assert awards.verify_api_key(db, world["api_key"]) is not None
    termination = sanctions.impose(db, second, "terminate", op, reason="累計兩次", now=at("2026-12-22 11:00:00"))  # fmt: skip
    project = world["project"]
    assert project.status == "terminated" and termination.status == "active"
    assert awards.verify_api_key(db, world["api_key"]) is None
    assert access.decide(db, world["lead"].username, at("2026-12-22 11:00:01")).refusal is access.TERMINATED  # fmt: skip
    [(_, detail)] = [(a, d) for a, d in audit_actions(db, "sanction") if a == "sanction.impose"]
    assert detail["counted_violations"] == [first.id, second.id]
    assert detail["api_keys_revoked"] == 1
    assert notices(db, violations.OPERATOR_NOTICE)[-1][0] == f"sanction-{termination.id}-imposed"
    with pytest.raises(violations.Conflict):  # nothing left to stop
        sanctions.impose(db, first, "suspend", op, reason="x", now=NOW)


def test_an_urgent_termination_with_one_violation(db, world):
    violation = record(db, world)
    termination = sanctions.impose(
        db, violation, "terminate", world["operator"], reason="終止", now=NOW,
        urgent_reason="持續自境外攻擊 / an ongoing attack",
    )  # fmt: skip
    assert termination.urgent_reason == "持續自境外攻擊 / an ongoing attack"
    assert world["project"].status == "terminated"


@pytest.fixture
def homes(tmp_path, world):
    root = tmp_path / "homes"
    for member in (world["lead"], world["contact"]):
        (root / member.username / "models").mkdir(parents=True)
        (root / member.username / "models" / "w.bin").write_bytes(b"x" * 1000)
    return root


def test_the_storage_is_purged_only_when_an_operator_confirms(db, world, homes):
    op = world["operator"]
    violation = record(db, world)
    session = running_server(db, world)
    termination = sanctions.impose(
        db, violation, "terminate", op, reason="終止", now=NOW, urgent_reason="急迫"
    )
    purger = lifecycle.LocalHomesPurger(homes)
    # the end-of-window job never purges a terminated project
    assert lifecycle.purge_closed_projects(db, purger, now=at("2027-06-01")) == []
    with pytest.raises(violations.Conflict):  # its server is still stopping
        sanctions.confirm_purge(db, termination, op, purger, reason="確認", now=NOW)
    metering.close_session(db, session, now=at("2026-12-20 10:00:30"))
    with pytest.raises(violations.Conflict):
        sanctions.confirm_purge(db, termination, op, None, reason="確認", now=NOW)
    assert len(list(homes.rglob("*.bin"))) == 2
    record_ = sanctions.confirm_purge(db, termination, op, purger, reason="確認清除", now=at("2026-12-20 11:00:00"))  # fmt: skip
    assert list(homes.rglob("*.bin")) == []
    assert (record_.bytes_deleted, record_.actor) == (2000, "op")
    assert (termination.status, termination.purge_id) == ("completed", record_.id)
    assert db.scalars(select(Purge)).all() == [record_]
    with pytest.raises(violations.Conflict):
        sanctions.confirm_purge(db, termination, op, purger, reason="again", now=NOW)
    assert notices(db)[-1][0] == f"sanction-{termination.id}-purged"


# ---- the bar from the next round -------------------------------------------------------------


def round_(db, op, name, opens, closes, category="training"):
    return apps.create_round(
        db, op, name=name, category=category, opens_at=at(opens), closes_at=at(closes),
        now=at(opens),
    )  # fmt: skip


def draft(db, who, round_, when):
    application = apps.create_draft(db, who, round_, now=at(when))
    errors = apps.save_draft(
        db, who, application, company=sample.company("22099131"), consent=sample.CONSENT,
        declarations=sample.DECLARATIONS, proposal=sample.training(), now=at(when),
    )  # fmt: skip
    return application, errors


def test_the_bar_keeps_the_company_out_of_its_next_round_once(db, world):
    op, alice = world["operator"], world["a"]
    violation = record(db, world)
    bar = sanctions.impose(db, violation, "bar_next_round", op, reason="停權一次", now=at("2027-01-10 12:00:00"))  # fmt: skip
    assert world["project"].status == "approved"  # the service goes on
    current = round_(
        db, op, "116-1", "2027-01-10 12:00:00", "2027-02-01"
    )  # opened at the same second
    application, errors = draft(db, alice, current, "2027-01-15 10:00:00")
    assert errors == {} and bar.status == "active"
    apps.submit(db, alice, application, now=at("2027-01-15 10:00:01"))

    following = round_(db, op, "116-2", "2027-03-01 00:00:00", "2027-04-01")
    barred, errors = draft(db, alice, following, "2027-03-02 09:00:00")
    assert "停權本梯次申請資格一次" in errors["company.business_number"]
    assert f"(violation #{violation.id})" in errors["company.business_number"]
    assert (bar.status, bar.round_id, bar.application_id) == ("used", following.id, barred.id)
    with pytest.raises(apps.Barred) as refused:
        apps.submit(db, alice, barred, now=at("2027-03-02 09:00:01"))
    assert "barred from this round once" in str(refused.value)
    assert barred.status == "draft"
    # the same round stays closed to the company, for every application of it
    other_category = round_(db, op, "116-2 推論", "2027-03-01 00:00:00", "2027-04-01", "inference")
    assert bar.round_id == following.id
    again, errors = draft(db, world["b"], other_category, "2027-03-03 09:00:00")
    assert "company.business_number" not in errors  # the bar was used on 116-2 training
    later = round_(db, op, "116-3", "2027-05-01 00:00:00", "2027-06-01")
    fine, errors = draft(db, world["b"], later, "2027-05-02 09:00:00")
    assert errors == {}
    apps.submit(db, world["b"], fine, now=at("2027-05-02 09:00:01"))
    assert fine.status == "submitted"
    assert notices(db)[-1][0] == f"sanction-{bar.id}-used"


def test_a_lifted_bar_keeps_nobody_out(db, world):
    op = world["operator"]
    bar = sanctions.impose(db, record(db, world), "bar_next_round", op, reason="停權", now=at("2027-01-10"))  # fmt: skip
    sanctions.lift(db, bar, op, reason="申訴成立", now=at("2027-01-20"))
    following = round_(db, op, "116-2", "2027-03-01 00:00:00", "2027-04-01")
    assert draft(db, world["a"], following, "2027-03-02 09:00:00")[1] == {}
    assert db.get(Project, world["project"].id).status == ProjectStatus.APPROVED


# ---- the API's description ----------------------------------------------------------------


def test_every_register_api_route_is_in_the_openapi_document_and_back():
    spec = yaml.safe_load(OPENAPI.read_text())
    routes = [
        (re.compile(pattern.removeprefix("api/v1")), handler)
        for pattern, handler in violation_pages.routes()
        if pattern.startswith("api/v1/")
    ]
    matched = set()
    for path, operations in spec["paths"].items():
        if not path.startswith(("/violations", "/sanctions")):
            continue
        for method, operation in operations.items():
            values = {
                p["name"]: p["schema"].get("enum", ["7"])
                for p in operation.get("parameters", [])
                if p["in"] == "path"
            }
            for combination in itertools.product(*values.values()):
                url = path.format(**dict(zip(values, combination, strict=True)))
                [(pattern, handler)] = [(p, h) for p, h in routes if p.fullmatch(url)]
                assert method in vars(handler), (url, method)
                matched.add(pattern.pattern)
    assert matched == {p.pattern for p, _ in routes}
