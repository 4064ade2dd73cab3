"""Project status transitions and grants: each change with exactly one audit row."""

from __future__ import annotations

import itertools
import json

import pytest
from sqlalchemy import func, select

from quota_service import db as database
from quota_service import ledger, projects
from quota_service.models import (
    AuditEvent,
    Company,
    LedgerEntry,
    LedgerKind,
    Project,
    ProjectStatus,
)
from quota_service.projects import ALLOWED_TRANSITIONS, TransitionNotAllowed, change_status
from tests.conftest import at

S = ProjectStatus
NOW = at("2026-11-28 10:00:00")
_numbers = itertools.count(30_000_000)


def new_project(db, status: ProjectStatus = S.PENDING) -> Project:
    company = Company(name="測試", business_number=str(next(_numbers)), created_at=NOW)
    project = Project(company=company, name="計畫", status=status, created_at=NOW)
    db.add(project)
    db.flush()
    return project


def audit_rows(db) -> list[AuditEvent]:
    db.flush()
    return list(db.scalars(select(AuditEvent).order_by(AuditEvent.id)))


ALLOWED = [(old, new) for old, targets in ALLOWED_TRANSITIONS.items() for new in targets]
REFUSED = [(old, new) for old in S for new in S if new not in ALLOWED_TRANSITIONS[old]]


def test_the_transition_table():
    assert sorted(ALLOWED) == sorted(
        [
            (S.PENDING, S.APPROVED),
            (S.PENDING, S.REJECTED),
            (S.APPROVED, S.SUSPENDED),
            (S.APPROVED, S.CLOSED),
            (S.APPROVED, S.TERMINATED),
            (S.SUSPENDED, S.APPROVED),
            (S.SUSPENDED, S.CLOSED),
            (S.SUSPENDED, S.TERMINATED),
        ]
    )
    assert len(ALLOWED) + len(REFUSED) == len(S) ** 2


@pytest.mark.parametrize(("old", "new"), ALLOWED, ids=lambda s: str(s))
def test_allowed_transition_changes_status_and_writes_one_audit_row(db, old, new):
    project = new_project(db, old)
    change_status(db, project, new, actor="operator", reason="審查會議決議", now=NOW)
    assert project.status == new
    rows = audit_rows(db)
    assert len(rows) == 1
    event = rows[0]
    assert (event.actor, event.action, event.subject_type, event.subject_id) == (
        "operator",
        "project.status",
        "project",
        str(project.id),
    )
    assert event.at == NOW
    assert json.loads(event.detail) == {
        "old": old.value,
        "new": new.value,
        "reason": "審查會議決議",
    }


def test_every_refused_transition_changes_nothing(db):
    assert (S.APPROVED, S.PENDING) in REFUSED
    assert (S.APPROVED, S.APPROVED) in REFUSED  # no transition to the same status
    for old, new in REFUSED:
        project = new_project(db, old)
        with pytest.raises(TransitionNotAllowed):
            change_status(db, project, new, actor="operator", reason="try", now=NOW)
        assert project.status == old, (old, new)
    assert audit_rows(db) == []


def test_approved_back_to_pending_is_refused_with_a_bilingual_message(db):
    project = new_project(db, S.APPROVED)
    with pytest.raises(TransitionNotAllowed) as refused:
        change_status(db, project, S.PENDING, actor="operator", reason="oops", now=NOW)
    assert "a project cannot go from approved to pending" in str(refused.value)
    assert "計畫狀態不能從" in str(refused.value)


@pytest.mark.parametrize("reason", ["", "   ", "\n\t"])
def test_an_empty_reason_is_refused(db, reason):
    project = new_project(db, S.PENDING)
    with pytest.raises(ValueError) as refused:
        change_status(db, project, S.APPROVED, actor="operator", reason=reason, now=NOW)
    assert not isinstance(refused.value, TransitionNotAllowed)
    assert project.status == S.PENDING
    assert audit_rows(db) == []


def test_a_sequence_of_changes_writes_one_row_each(db):
    project = new_project(db, S.PENDING)
    for new in (S.APPROVED, S.SUSPENDED, S.APPROVED, S.CLOSED):
        change_status(db, project, new, actor="operator", reason=f"to {new}", now=NOW)
    details = [json.loads(e.detail) for e in audit_rows(db)]
    assert [(d["old"], d["new"]) for d in details] == [
        ("pending", "approved"),
        ("approved", "suspended"),
        ("suspended", "approved"),
        ("approved", "closed"),
    ]
    with pytest.raises(TransitionNotAllowed):  # closed is final
        change_status(db, project, S.APPROVED, actor="operator", reason="reopen", now=NOW)


def test_status_and_audit_row_commit_or_roll_back_together(session_factory):
    with database.transaction(session_factory) as db:
        project_id = new_project(db, S.PENDING).id

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with database.transaction(session_factory) as db:
            change_status(
                db, db.get(Project, project_id), S.APPROVED, actor="op", reason="ok", now=NOW
            )
            db.flush()  # both rows are written, then the transaction fails
            raise Boom
    with database.transaction(session_factory) as db:
        assert db.get(Project, project_id).status == S.PENDING
        assert db.scalar(select(func.count()).select_from(AuditEvent)) == 0

    with database.transaction(session_factory) as db:
        change_status(db, db.get(Project, project_id), S.APPROVED, actor="op", reason="ok", now=NOW)
    with database.transaction(session_factory) as db:
        assert db.get(Project, project_id).status == S.APPROVED
        assert db.scalar(select(func.count()).select_from(AuditEvent)) == 1


def test_module_exports_used_by_the_handlers():
    assert projects.TransitionNotAllowed is TransitionNotAllowed
    assert issubclass(TransitionNotAllowed, ValueError)


# --- grants and the balance ---------------------------------------------------------------


def test_grant_adds_an_entry_and_an_audit_row(db):
    project = new_project(db, S.APPROVED)
    entry = ledger.grant(db, project, 1_000_000, actor="operator", reason="L1 核定", now=NOW)
    db.flush()
    assert (entry.kind, entry.amount_millipoints, entry.reason, entry.actor) == (
        LedgerKind.GRANT,
        1_000_000,
        "L1 核定",
        "operator",
    )
    assert entry.session_id is None and entry.period_index is None
    [event] = audit_rows(db)
    assert (event.action, event.subject_id, event.actor) == (
        "ledger.grant",
        str(project.id),
        "operator",
    )
    assert json.loads(event.detail) == {"millipoints": 1_000_000, "reason": "L1 核定"}
    assert ledger.balance(db, project.id) == 1_000_000


@pytest.mark.parametrize("reason", ["", "  "])
def test_grant_requires_a_reason(db, reason):
    project = new_project(db, S.APPROVED)
    with pytest.raises(ValueError, match="reason is required"):
        ledger.grant(db, project, 1000, actor="operator", reason=reason, now=NOW)
    assert audit_rows(db) == []
    assert db.scalar(select(func.count()).select_from(LedgerEntry)) == 0


@pytest.mark.parametrize("amount", [0, -1, -1_000_000])
def test_grant_must_be_positive(db, amount):
    project = new_project(db, S.APPROVED)
    with pytest.raises(ValueError):
        ledger.grant(db, project, amount, actor="operator", reason="x", now=NOW)
    assert audit_rows(db) == []
    assert ledger.balance(db, project.id) == 0


def test_adjustment_may_be_negative_but_not_zero(db):
    project = new_project(db, S.APPROVED)
    ledger.grant(db, project, 2_000_000, actor="operator", reason="L2", now=NOW)
    ledger.grant(
        db,
        project,
        -500,
        actor="operator",
        reason="correction",
        now=NOW,
        kind=LedgerKind.ADJUSTMENT,
    )
    with pytest.raises(ValueError):
        ledger.grant(
            db, project, 0, actor="operator", reason="nothing", now=NOW, kind=LedgerKind.ADJUSTMENT
        )
    assert ledger.balance(db, project.id) == 1_999_500
    assert [e.action for e in audit_rows(db)] == ["ledger.grant", "ledger.adjustment"]


def test_balance_is_the_sum_of_the_entries(db):
    a, b, empty = new_project(db, S.APPROVED), new_project(db, S.APPROVED), new_project(db)
    ledger.grant(db, a, 1_000_000, actor="op", reason="L1", now=NOW)
    ledger.grant(db, a, 6_000_000, actor="op", reason="L3", now=NOW)
    ledger.grant(db, a, -250, actor="op", reason="fix", now=NOW, kind=LedgerKind.ADJUSTMENT)
    db.add(
        LedgerEntry(project_id=a.id, kind=LedgerKind.USAGE, amount_millipoints=-167, created_at=NOW)
    )
    ledger.grant(db, b, 2_000_000, actor="op", reason="L2", now=NOW)
    db.flush()
    assert ledger.balance(db, a.id) == 1_000_000 + 6_000_000 - 250 - 167 == 6_999_583
    assert ledger.balance(db, b.id) == 2_000_000
    assert ledger.balance(db, empty.id) == 0
    assert ledger.balances(db, [a.id, b.id, empty.id]) == {
        a.id: 6_999_583,
        b.id: 2_000_000,
        empty.id: 0,
    }
    assert ledger.balances(db, []) == {}


def test_balance_beyond_32_bits(db):
    project = new_project(db, S.APPROVED)
    for _ in range(3):
        ledger.grant(db, project, 1_000_000_000, actor="op", reason="big", now=NOW)
    db.flush()
    assert ledger.balance(db, project.id) == 3_000_000_000
