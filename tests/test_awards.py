"""Awards: points on the ledger, the window from the notice date, the project and its members,
trusted networks for training, the API key for inference; only operators award."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import select

from quota_service import access, awards, ledger, review
from quota_service import applications as apps
from quota_service.models import (
    Account,
    ApiKey,
    ApplicationStatus,
    AuditEvent,
    Membership,
    Notice,
    ProjectStatus,
)
from tests.application_flow import NOW, account, make_round, people, qualified
from tests.conftest import at
from tests.test_review import INFERENCE_SCORES, TRAINING_SCORES

S = ApplicationStatus


@pytest.fixture
def world(db):
    p = people(db)
    p["training"] = make_round(db, p["operator"])
    p["inference"] = make_round(db, p["operator"], "inference")
    return p


def selected(db, world, category: str, tier: str, **kw):
    op = world["operator"]
    application = qualified(db, op, world["a"], world[category], **kw)
    scores = TRAINING_SCORES if category == "training" else INFERENCE_SCORES
    for name in ("r1", "r2", "r3"):
        review.assign(db, op, application, world[name], now=NOW)
        review.submit_sheet(db, world[name], application, scores, now=NOW)
    if category == "training":
        review.record_meeting_decision(db, op, application, selected=True, tier=tier, now=NOW)
    else:
        assert review.decide_inference(db, op, application, tier=tier, now=NOW)
    return application


def test_username_is_derived_deterministically():
    name = awards.username_for_email("Lead.Lin@Startup.example.tw")
    assert name == awards.username_for_email("lead.lin@startup.example.tw ")
    assert name.startswith("lead-lin-") and len(name) == len("lead-lin-") + 8
    assert name != awards.username_for_email("lead.lin@other.example.tw")
    assert awards.username_for_email("+++@x.tw").startswith("user-")


def test_training_award(db, world):
    application = selected(db, world, "training", "L2")
    existing = account(db, "lin", email="LEAD@startup.example.tw")  # linked, not duplicated
    op = world["operator"]
    result = awards.award(
        db,
        op,
        application,
        notice_date=date(2026, 12, 1),
        now=at("2026-12-01 10:00:00"),
        trusted=["203.0.113.7", "198.51.100.0/24", "2001:db8::/48"],
        trainees=["trainee1@startup.example.tw", "lead@startup.example.tw"],
    )
    project = result.project
    assert result.api_key is None
    assert (project.status, project.tier, project.category) == (
        ProjectStatus.APPROVED,
        "L2",
        "training",
    )
    assert project.window_start == at("2026-12-01 00:00:00")
    assert project.window_end == at("2027-03-01 00:00:00")  # 3 months from the notice date
    assert ledger.balance(db, project.id) == 2000 * 1000
    assert result.award.points == 2000
    assert application.status == S.AWARDED and application.project_id == project.id
    assert awards.trusted_networks(db, project.id) == [
        "203.0.113.7/32",
        "198.51.100.0/24",
        "2001:db8::/48",
    ]
    # what the hub is told to enforce for this project's members
    assert access.trusted_networks_of(db, project) == awards.trusted_networks(db, project.id)
    members = {
        (m.account.email.lower(), m.role)
        for m in db.scalars(select(Membership).where(Membership.project_id == project.id))
    }
    assert members == {
        ("lead@startup.example.tw", "lead"),
        ("contact@startup.example.tw", "contact"),
        ("trainee1@startup.example.tw", "trainee"),
    }
    lead = db.scalar(
        select(Membership).where(Membership.project_id == project.id, Membership.role == "lead")
    )
    assert lead.account_id == existing.id
    trainee = db.scalar(select(Account).where(Account.email == "trainee1@startup.example.tw"))
    assert trainee.username == awards.username_for_email("trainee1@startup.example.tw")
    # the new trainee may start servers inside the window
    assert access.decide(db, trainee.username, at("2026-12-01 10:00:00")).may_spawn
    notice = db.scalar(select(Notice).where(Notice.kind == awards.AWARD_NOTICE))
    assert notice.project_id == project.id and notice.application_id == application.id
    assert "2027-02-28 23:59:59" in notice.body and "L2" in notice.body and "2000" in notice.body
    actions = db.scalars(
        select(AuditEvent.action).where(AuditEvent.at == at("2026-12-01 10:00:00"))
    )
    assert {"project.status", "ledger.grant", "application.status"} <= set(actions)


def test_training_needs_trusted_networks_and_refuses_bad_ones(db, world):
    application = selected(db, world, "training", "L1")
    op = world["operator"]
    with pytest.raises(apps.ApplicationError, match="trusted"):
        awards.award(db, op, application, notice_date=date(2026, 12, 1), now=NOW)
    with pytest.raises(apps.ApplicationError, match="203.0.113.7/24"):
        awards.award(
            db,
            op,
            application,
            notice_date=date(2026, 12, 1),
            now=NOW,
            trusted=["203.0.113.7/24"],  # host bits set
        )
    with pytest.raises(apps.ApplicationError, match="999"):
        awards.award(
            db, op, application, notice_date=date(2026, 12, 1), now=NOW, trusted=["10.0.0.999"]
        )
    assert application.status == S.SELECTED
    result = awards.award(
        db, op, application, notice_date=date(2026, 12, 1), now=NOW, trusted=["203.0.113.0/24"]
    )
    assert awards.set_trusted_networks(
        db, op, result.award, ["203.0.113.0/24", "2001:db8:1::1"], now=NOW
    ) == ["203.0.113.0/24", "2001:db8:1::1/128"]
    with pytest.raises(apps.PermissionDenied):
        awards.set_trusted_networks(db, world["a"], result.award, ["192.0.2.1"], now=NOW)


def test_only_operators_award_and_only_selected_applications(db, world):
    application = selected(db, world, "training", "L1")
    for who in (world["a"], world["r1"]):
        with pytest.raises(apps.PermissionDenied):
            awards.award(
                db,
                who,
                application,
                notice_date=date(2026, 12, 1),
                now=NOW,
                trusted=["192.0.2.1"],
            )
    other = qualified(
        db, world["operator"], world["b"], world["training"], business_number="04595257"
    )
    with pytest.raises(apps.TransitionNotAllowed):
        awards.award(
            db,
            world["operator"],
            other,
            notice_date=date(2026, 12, 1),
            now=NOW,
            trusted=["192.0.2.1"],
        )
    awards.award(
        db,
        world["operator"],
        application,
        notice_date=date(2026, 12, 1),
        now=NOW,
        trusted=["192.0.2.1"],
    )
    with pytest.raises(apps.TransitionNotAllowed):  # awarding twice creates nothing twice
        awards.award(
            db,
            world["operator"],
            application,
            notice_date=date(2026, 12, 1),
            now=NOW,
            trusted=["192.0.2.1"],
        )


def test_configurable_tier_points(db, world):
    application = selected(db, world, "training", "L3")
    result = awards.award(
        db,
        world["operator"],
        application,
        notice_date=date(2026, 11, 30),
        now=NOW,
        trusted=["192.0.2.1"],
        settings=awards.AwardSettings(tier_points={"L1": 1, "L2": 2, "L3": 7500}),
    )
    assert ledger.balance(db, result.project.id) == 7_500_000
    assert result.project.window_end == at("2027-02-28 00:00:00")  # clipped month end


def test_inference_api_key_shown_once_stored_as_hash(db, world):
    application = selected(db, world, "inference", "L1")
    op = world["operator"]
    result = awards.award(db, op, application, notice_date=date(2026, 12, 1), now=NOW)
    token = result.api_key
    assert token.startswith("aip_") and len(token) == 4 + 43
    stored = db.scalars(select(ApiKey)).all()
    assert len(stored) == 1
    assert stored[0].key_hash == awards.hash_key(token) != token
    assert token not in {getattr(stored[0], c) for c in ("key_hash", "prefix", "created_by")}
    assert awards.verify_api_key(db, token).id == stored[0].id
    assert awards.verify_api_key(db, token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert ledger.balance(db, result.project.id) == 1000 * 1000
    # the company's lead replaces it: the old one stops working
    lead = db.scalar(
        select(Account)
        .join(Membership)
        .where(Membership.project_id == result.project.id, Membership.role == "lead")
    )
    new = awards.regenerate_api_key(db, lead, result.award, now=NOW)
    assert new != token
    assert awards.verify_api_key(db, token) is None
    assert awards.verify_api_key(db, new) is not None
    # a stranger cannot; the operator revokes
    with pytest.raises(apps.PermissionDenied):
        awards.regenerate_api_key(db, world["b"], result.award, now=NOW)
    with pytest.raises(apps.PermissionDenied):
        awards.revoke_api_key(db, lead, result.award, now=NOW)
    assert awards.revoke_api_key(db, op, result.award, now=NOW) == 1
    assert awards.verify_api_key(db, new) is None
    with pytest.raises(apps.ApplicationError):  # no trusted networks for inference
        awards.set_trusted_networks(db, op, result.award, ["192.0.2.1"], now=NOW)


def test_an_award_finds_the_account_of_a_person_who_visited_under_the_made_name(db):
    name = awards.username_for_email("Lead@startup.example.tw")
    visited = access.account_of(db, name, now=at("2026-11-01 09:00"))  # no address known yet
    found = awards.account_for_email(
        db, "Lead@startup.example.tw", "林組長", now=at("2026-11-02 09:00")
    )
    assert found.id == visited.id and found.email == "Lead@startup.example.tw"
    # a different address never takes an account over
    other = awards.account_for_email(db, "other@startup.example.tw", "", now=at("2026-11-02 09:00"))
    assert other.id != visited.id


def test_the_lead_adds_trainees_after_the_award(db, world):
    result = awards.award(
        db,
        world["operator"],
        selected(db, world, "training", "L1"),
        notice_date=date(2026, 12, 1),
        now=at("2026-12-01 10:00:00"),
        trusted=["203.0.113.7"],
    )
    lead = db.scalar(
        select(Account)
        .join(Membership)
        .where(Membership.project_id == result.project.id, Membership.role == "lead")
    )
    later = at("2026-12-20 09:00:00")
    added = awards.add_trainees(
        db, lead, result.award, ["new.one@startup.example.tw", "Lead@startup.example.tw"], now=later
    )
    # the lead is already a member (as lead): only the new address becomes a trainee
    assert added == [awards.username_for_email("new.one@startup.example.tw")]
    assert access.is_member(db, result.project.id, added[0])
    assert (
        awards.add_trainees(
            db, world["operator"], result.award, ["new.one@startup.example.tw"], now=later
        )
        == []
    )

    with pytest.raises(apps.PermissionDenied):  # a trainee does not manage the team
        trainee = db.scalar(select(Account).where(Account.username == added[0]))
        awards.add_trainees(db, trainee, result.award, ["x@startup.example.tw"], now=later)
    with pytest.raises(apps.ApplicationError) as bad:
        awards.add_trainees(db, lead, result.award, ["not-an-address"], now=later)
    assert bad.value.field == "trainees"
    result.project.status = ProjectStatus.CLOSED
    with pytest.raises(apps.StateConflict):
        awards.add_trainees(db, lead, result.award, ["late@startup.example.tw"], now=later)
