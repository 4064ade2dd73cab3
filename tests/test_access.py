"""Who may start GPU servers: access.decide on real databases (SQLite and PostgreSQL)."""

from __future__ import annotations

import itertools
import json
from datetime import date, timedelta

import pytest

from hub_config.seed import seed_demo
from quota_service import access
from quota_service.models import Account, AuditEvent, Company, Membership, Project, ProjectStatus
from quota_service.timewindow import window_for_notice
from tests.conftest import at

SECOND = timedelta(seconds=1)
CREATED = at("2026-11-01 09:00:00")
START, END = window_for_notice(date(2026, 11, 28))  # [2026-11-28, 2027-02-28) Taipei
INSIDE = at("2026-12-15 10:00:00")
_numbers = itertools.count(10_000_000)


def company(db) -> Company:
    c = Company(
        name="測試科技股份有限公司", business_number=str(next(_numbers)), created_at=CREATED
    )
    db.add(c)
    return c


def account(db, username: str, **flags) -> Account:
    a = Account(username=username, created_at=CREATED, **flags)
    db.add(a)
    return a


def project(db, status=ProjectStatus.APPROVED, window=(START, END), **fields) -> Project:
    p = Project(
        company=company(db),
        name=f"計畫 {status}",
        status=status,
        window_start=window[0],
        window_end=window[1],
        created_at=CREATED,
        **fields,
    )
    db.add(p)
    db.flush()
    return p


def member(db, who: Account, of: Project, role: str = "trainee") -> Membership:
    m = Membership(account=who, project=of, role=role, created_at=CREATED)
    db.add(m)
    db.flush()
    return m


def test_unknown_username_is_not_a_member(db):
    decision = access.decide(db, "nobody", INSIDE)
    assert decision.refusal is access.NOT_A_MEMBER
    assert decision.refusal.code == "not-a-member"
    assert decision.project is None
    assert decision.groups == []
    assert decision.may_spawn is False


def test_account_without_membership_is_not_a_member(db):
    account(db, "alone")
    project(db)  # an approved project that is not theirs
    db.flush()
    decision = access.decide(db, "alone", INSIDE)
    assert decision.refusal is access.NOT_A_MEMBER
    assert decision.project is None
    assert not decision.may_spawn


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (ProjectStatus.PENDING, "application-pending"),
        (ProjectStatus.REJECTED, "application-rejected"),
        (ProjectStatus.SUSPENDED, "project-suspended"),
        (ProjectStatus.CLOSED, "project-closed"),
        (ProjectStatus.TERMINATED, "project-terminated"),
    ],
)
def test_project_status_refusals(db, status, code):
    p = project(db, status)
    member(db, account(db, "alice"), p)
    decision = access.decide(db, "alice", INSIDE)  # inside the window: the status decides
    assert decision.refusal is not None and decision.refusal.code == code
    assert decision.project.id == p.id
    assert access.GPU_USERS_GROUP not in decision.groups
    assert not decision.may_spawn


def test_pending_project_without_a_window_says_pending(db):
    p = project(db, ProjectStatus.PENDING, window=(None, None))
    member(db, account(db, "applicant"), p, role="lead")
    assert access.decide(db, "applicant", INSIDE).refusal is access.PENDING


def test_window_not_yet_open(db):
    member(db, account(db, "early"), project(db))
    decision = access.decide(db, "early", at("2026-11-27 23:59:59"))
    assert decision.refusal is access.WINDOW_NOT_OPEN
    assert not decision.may_spawn
    # the first second of the notice date opens it
    assert access.decide(db, "early", at("2026-11-28 00:00:00")).may_spawn


def test_approved_without_a_window_is_not_open(db):
    member(db, account(db, "nowindow"), project(db, window=(None, None)))
    assert access.decide(db, "nowindow", INSIDE).refusal is access.WINDOW_NOT_OPEN


def test_window_ended_exactly_at_window_end_and_open_one_second_before(db):
    member(db, account(db, "late"), project(db))
    assert END == at("2027-02-28 00:00:00")
    ended = access.decide(db, "late", END)
    assert ended.refusal is access.WINDOW_ENDED
    assert ended.refusal.code == "window-ended"
    last = access.decide(db, "late", END - SECOND)
    assert last.may_spawn and last.refusal is None


def test_approved_and_open_may_spawn_in_gpu_users(db):
    p = project(db, max_gpus_per_server=4)
    member(db, account(db, "trainee"), p)
    decision = access.decide(db, "trainee", INSIDE)
    assert decision.may_spawn
    assert decision.refusal is None
    assert decision.groups == ["gpu-users"]
    assert decision.project.id == p.id
    assert decision.project.max_gpus_per_server == 4


def test_operator_and_reviewer_groups(db):
    account(db, "op", is_operator=True)
    account(db, "rev", is_reviewer=True)
    account(db, "both", is_operator=True, is_reviewer=True)
    db.flush()
    op = access.decide(db, "op", INSIDE)
    assert op.groups == ["operators"]
    assert op.refusal is access.NOT_A_MEMBER  # staff, but not a member of a project
    assert access.decide(db, "rev", INSIDE).groups == ["reviewers"]
    assert access.decide(db, "both", INSIDE).groups == ["operators", "reviewers"]


def test_operator_who_is_also_a_member_gets_both_groups(db):
    member(db, account(db, "opmember", is_operator=True), project(db))
    decision = access.decide(db, "opmember", INSIDE)
    assert decision.groups == ["operators", "gpu-users"]
    assert decision.may_spawn


def test_several_projects_the_first_usable_one_is_charged(db):
    alice = account(db, "alice")
    closed = project(db, ProjectStatus.CLOSED)
    first = project(db)
    second = project(db)
    for p in (closed, second, first):
        member(db, alice, p)
    decision = access.decide(db, "alice", INSIDE)
    assert decision.may_spawn
    assert decision.project.id == first.id == min(first.id, second.id)


def test_several_projects_none_usable_shows_the_latest_refusal(db):
    bob = account(db, "bob")
    suspended = project(db, ProjectStatus.SUSPENDED)
    pending = project(db, ProjectStatus.PENDING)
    member(db, bob, pending)
    member(db, bob, suspended)
    decision = access.decide(db, "bob", INSIDE)
    assert decision.project.id == max(suspended.id, pending.id) == pending.id
    assert decision.refusal is access.PENDING


def test_is_member(db):
    p, other = project(db), project(db)
    member(db, account(db, "carol"), p)
    account(db, "dave")
    db.flush()
    assert access.is_member(db, p.id, "carol")
    assert not access.is_member(db, other.id, "carol")
    assert not access.is_member(db, p.id, "dave")
    assert not access.is_member(db, p.id, "nobody")


def test_the_seeded_demo_accounts(db):
    now = at("2026-11-28 09:00:00")
    assert seed_demo(db, now=now) is True
    assert seed_demo(db, now=now) is False  # once only
    trainee = access.decide(db, "trainee", now)
    assert trainee.may_spawn and trainee.groups == ["gpu-users"]
    assert access.decide(db, "applicant", now).refusal is access.PENDING
    assert access.decide(db, "operator", now).groups == ["operators"]
    assert access.decide(db, "reviewer", now).groups == ["reviewers"]
    # the demo window is the notice date (today in Taipei) + 3 months
    assert access.decide(db, "trainee", at("2027-02-27 23:59:59")).may_spawn
    assert access.decide(db, "trainee", at("2027-02-28 00:00:00")).refusal is access.WINDOW_ENDED


def test_refusal_messages_are_bilingual():
    for refusal in (access.NOT_A_MEMBER, access.PENDING, access.WINDOW_ENDED):
        zh, en = refusal.message.split(" / ")
        assert zh == refusal.zh and en == refusal.en
        assert not zh.isascii() and en.isascii()


def test_a_person_gets_an_account_at_the_first_visit_and_keeps_it(db):
    first = access.account_of(db, "newcomer@startup.example.tw", now=at("2026-11-28 09:00"))
    again = access.account_of(db, "newcomer@startup.example.tw", now=at("2026-11-29 09:00"))
    assert first.id == again.id
    assert again.created_at == at("2026-11-28 09:00")
    assert db.query(Account).filter_by(username="newcomer@startup.example.tw").count() == 1


# ---- a hub sign-in tied to the account an award made by e-mail ---------------------------


def award_placeholder(db, email: str, company_number: str) -> tuple[Account, Project]:
    """What an award does for a member who never signed in: an account named from the
    address, a member of the project."""
    from quota_service.awards import account_for_email

    now = at("2026-11-02 10:00")
    account = account_for_email(db, email, "", now=now)
    company = Company(name="新創", business_number=company_number, created_at=now)
    project = Project(company=company, name="新計畫", status=ProjectStatus.APPROVED,
                      tier="L1", created_at=now)  # fmt: skip
    db.add_all([company, project])
    db.add(Membership(project=project, account=account, role="trainee", created_at=now))
    db.flush()
    return account, project


def test_a_first_sign_in_takes_over_the_account_the_award_made(db):
    placeholder, project = award_placeholder(db, "Lead.Lin@startup.example.tw", "22099131")
    linked = access.link_sign_in(
        db, "lead", "lead.lin@startup.example.tw", now=at("2026-11-03 09:00")
    )
    assert linked.id == placeholder.id and linked.username == "lead"
    assert access.is_member(db, project.id, "lead")
    again = access.link_sign_in(
        db, "lead", "lead.lin@startup.example.tw", now=at("2026-11-03 09:01")
    )
    assert again.id == placeholder.id


def test_an_applicant_who_signed_in_before_the_award_gets_its_memberships(db):
    before = access.account_of(db, "applicant-1", now=at("2026-10-01 09:00"))  # no address yet
    placeholder, project = award_placeholder(db, "ceo@startup.example.tw", "22099131")
    linked = access.link_sign_in(
        db, "applicant-1", "CEO@startup.example.tw", now=at("2026-11-03 09:00")
    )
    assert linked.id == before.id and linked.email == "CEO@startup.example.tw"
    assert access.is_member(db, project.id, "applicant-1")
    assert db.get(Account, placeholder.id) is None
    merged = db.query(AuditEvent).filter_by(action="account.merged").one()
    assert json.loads(merged.detail)["projects"] == [project.id]


def test_an_address_held_by_someone_who_signed_in_is_not_taken(db):
    owner = access.account_of(db, "owner", now=at("2026-10-01 09:00"))
    owner.email = "shared@startup.example.tw"
    other = access.link_sign_in(
        db, "other", "shared@startup.example.tw", now=at("2026-11-03 09:00")
    )
    assert other.id != owner.id and owner.username == "owner"
    assert other.email == ""  # one address, one person: the award finds the owner
    assert access.decide(db, "other", at("2026-11-03 09:00")).project is None


def test_a_claim_that_is_not_an_address_links_nothing(db):
    placeholder, _ = award_placeholder(db, "lead@startup.example.tw", "22099131")
    account = access.link_sign_in(db, "alice", "alice", now=at("2026-11-03 09:00"))
    assert account.email == "" and account.id != placeholder.id
