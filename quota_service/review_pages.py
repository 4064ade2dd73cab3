"""The operator's and the reviewers' pages of the application review (issue 3).

Operators: rounds, the queue of applications, one application's qualification review
(automatic checks with their evidence, pass or fail per criterion, qualify, reject, supplement
request), reviewer assignment and recusals, the ranking of a round with the inference pass mark
or the training review meeting, and the award. Reviewers: their assignments, an application's
documents, a conflict-of-interest declaration and the score sheet.

Thin: every rule and permission is the domain's (``applications``, ``review``, ``awards``);
this module parses forms, maps the domain's refusals to HTTP (403 permission, 409 state, a
message at the field for bad input) and reads what the pages list. The service runs these
synchronous handlers one at a time on its event loop, so a check made before an action (an
application already awarded, a round already created) cannot race with a second click.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from tornado import web

from . import application_form, awards, review, validation
from . import applications as apps
from .handlers import BaseHandler
from .models import (
    Account,
    Application,
    ApplicationStatus,
    Award,
    Category,
    ReviewerAssignment,
    Round,
    ScoreSheet,
)
from .timewindow import TAIPEI, last_second, taipei, utcnow, window_for_notice

A = ApplicationStatus
message = validation.message

REQUIRED = validation.REQUIRED
SCORE_MESSAGE = message("請填 0 到 100 的整數", "a whole score from 0 to 100")
DAY_MESSAGE = message("日期格式應為 YYYY-MM-DD", "a date is written YYYY-MM-DD")
TIME_MESSAGE = message("時間格式應為 HH:MM", "a time is written HH:MM")
TIER_MESSAGE = message("請選擇級別 L1、L2 或 L3", "choose the tier L1, L2 or L3")


def taipei_text(moment: datetime | None) -> str:
    return "—" if moment is None else taipei(moment).strftime("%Y-%m-%d %H:%M:%S")


def last_second_text(exclusive_end: datetime | None) -> str:
    """An exclusive end as people read it: the last second that is still in."""
    return "—" if exclusive_end is None else taipei_text(last_second(exclusive_end))


def hundredths(value: int) -> Decimal:
    """A total stored in hundredths of a point, exact, always with two decimals (76.00)."""
    return Decimal(value).scaleb(-2)


def http_url(value) -> str | None:
    """The value when it is an http(s) link (shown as a link), else None."""
    text = str(value or "").strip()
    return text if re.match(r"https?://[^\s]+$", text) else None


# ---- what the pages list ---------------------------------------------------------------------


def all_rounds(db: Session, operator: Account) -> list[dict]:
    apps.require_operator(operator)
    counts = dict(
        db.execute(
            select(Application.round_id, func.count())
            .where(Application.status != A.DRAFT)
            .group_by(Application.round_id)
        ).all()
    )
    return [{"round": r, "applications": counts.get(r.id, 0)} for r in apps.rounds(db)]


def queue(
    db: Session,
    operator: Account,
    *,
    round_id: int | None = None,
    category: str = "",
    status: str = "",
) -> list[Application]:
    """Submitted applications (drafts are the applicant's own), oldest submission first."""
    apps.require_operator(operator)
    query = select(Application).where(Application.status != A.DRAFT)
    if round_id is not None:
        query = query.where(Application.round_id == round_id)
    if category:
        query = query.where(Application.category == category)
    if status:
        query = query.where(Application.status == status)
    return list(db.scalars(query.order_by(Application.submitted_at, Application.id)))


@dataclass
class AssignmentView:
    assignment: ReviewerAssignment
    reviewer: Account
    sheet: ScoreSheet | None


def assignments(db: Session, application: Application) -> list[AssignmentView]:
    rows = db.execute(
        select(ReviewerAssignment, Account, ScoreSheet)
        .join(Account, Account.id == ReviewerAssignment.reviewer_id)
        .outerjoin(ScoreSheet, ScoreSheet.assignment_id == ReviewerAssignment.id)
        .where(ReviewerAssignment.application_id == application.id)
        .order_by(ReviewerAssignment.id)
    ).all()
    return [AssignmentView(*row) for row in rows]


def reviewers(db: Session) -> list[Account]:
    return list(db.scalars(select(Account).where(Account.is_reviewer).order_by(Account.username)))


@dataclass
class MyAssignment:
    assignment: ReviewerAssignment
    application: Application
    round: Round
    sheet: ScoreSheet | None


def my_assignments(
    db: Session, reviewer: Account, application_id: int | None = None
) -> list[MyAssignment]:
    query = (
        select(ReviewerAssignment, Application, Round, ScoreSheet)
        .join(Application, Application.id == ReviewerAssignment.application_id)
        .join(Round, Round.id == Application.round_id)
        .outerjoin(ScoreSheet, ScoreSheet.assignment_id == ReviewerAssignment.id)
        .where(ReviewerAssignment.reviewer_id == reviewer.id)
    )
    if application_id is not None:
        query = query.where(ReviewerAssignment.application_id == application_id)
    order = (ReviewerAssignment.assigned_at.desc(), ReviewerAssignment.id.desc())
    return [MyAssignment(*row) for row in db.execute(query.order_by(*order)).all()]


def my_assignment(db: Session, reviewer: Account, application_id: int) -> MyAssignment | None:
    found = my_assignments(db, reviewer, application_id)
    return found[0] if found else None


@dataclass(frozen=True)
class SupplementChoice:
    path: str
    label: str  # a message id of the applicant's form
    whole_section: bool


def supplement_choices(category: str) -> list[SupplementChoice]:
    """What an operator may ask the applicant to change: each section that stands for a part
    of the documents (``proposal.dataset``), and each field, as the applicant's form has them."""
    choices = []
    for part in application_form.parts_for(category):
        for section in part.sections:
            if section.path:
                choices.append(SupplementChoice(section.path, section.title, True))
            choices += [
                SupplementChoice(f.path, f.label, False) for f in section.fields_for(category)
            ]
    return choices


def supporting_fields(category: str) -> list[application_form.Field]:
    """The bonus section's links and uploaded files."""
    return [
        f
        for f in application_form.fields_for(category)
        if f.path.startswith("proposal.bonus.") and (f.kind == "file" or f.inputmode == "url")
    ]


# ---- forms -------------------------------------------------------------------------------------


class FormErrors(Exception):
    """Bad input: the page comes back with these messages at their fields (``_form`` for the
    form as a whole) and everything typed. Raised inside the unit of work, it rolls it back."""

    def __init__(self, errors: dict[str, str]):
        super().__init__(errors)
        self.errors = errors


@dataclass(frozen=True)
class Typed:
    """What the person sent, to show it back."""

    values: dict[str, list[str]] = field(default_factory=dict)

    def get(self, name: str, default: str = "") -> str:
        return (self.values.get(name) or [default])[0]

    def all(self, name: str) -> list[str]:
        return self.values.get(name, [])


def entries(text: str) -> list[str]:
    """What a list box holds, one entry a line (commas and spaces separate too): addresses,
    e-mails, field names."""
    return [part for part in re.split(r"[\s,，]+", text) if part]


def parse_day(text: str, errors: dict[str, str], name: str) -> date | None:
    if not text.strip():
        errors[name] = REQUIRED
        return None
    day = validation.parse_date(text)
    if day is None:
        errors[name] = DAY_MESSAGE
    return day


def parse_minute(text: str, default: time, errors: dict[str, str], name: str) -> time | None:
    """``HH:MM`` (a time input's value); blank means ``default``."""
    if not text.strip():
        return default
    match = re.fullmatch(r"(\d{1,2}):(\d{2})(?::00)?", text.strip())
    if not match or int(match.group(1)) > 23 or int(match.group(2)) > 59:
        errors[name] = TIME_MESSAGE
        return None
    return time(int(match.group(1)), int(match.group(2)))


@dataclass(frozen=True)
class RoundForm:
    name: str
    category: str
    opens_at: datetime
    closes_at: datetime


def parse_round(typed: Typed) -> RoundForm:
    """Opening from a Taipei day and time (blank time: 00:00); closing "until" a day and
    minute (blank: 23:59), that minute included: the round accepts until hh:mm:59 and its
    exclusive end is the next minute, so a day alone is ``applications.deadline_after``."""
    errors: dict[str, str] = {}
    name = typed.get("name").strip()
    problem = validation.check_text(name, limit=200)
    if problem:
        errors["name"] = problem
    category = typed.get("category")
    if category not in set(Category):
        errors["category"] = message("請選擇類別", "choose the category")
    opens_day = parse_day(typed.get("opens_day"), errors, "opens_day")
    opens_time = parse_minute(typed.get("opens_time"), time(0), errors, "opens_time")
    closes_day = parse_day(typed.get("closes_day"), errors, "closes_day")
    closes_time = parse_minute(typed.get("closes_time"), time(23, 59), errors, "closes_time")
    if errors:
        raise FormErrors(errors)
    opens_at = datetime.combine(opens_day, opens_time, TAIPEI)
    closes_at = datetime.combine(closes_day, closes_time, TAIPEI) + timedelta(minutes=1)
    if closes_at <= opens_at:
        raise FormErrors(
            {"closes_day": message("截止時間應晚於開始時間", "a round closes after it opens")}
        )
    return RoundForm(name, category, opens_at, closes_at)


def parse_scores(category: str, typed: Typed) -> dict[str, int]:
    """Whole scores 0..100 for every criterion of the category (form fields ``score_<name>``)."""
    scores, errors = {}, {}
    for name in review.WEIGHTS[Category(category)]:
        text = typed.get(f"score_{name}").strip()
        if not text:
            errors[f"score_{name}"] = REQUIRED
        elif not re.fullmatch(r"\d{1,3}", text) or int(text) > 100:
            errors[f"score_{name}"] = SCORE_MESSAGE
        else:
            scores[name] = int(text)
    for name in ("comment_to_applicant", "private_comment"):
        problem = validation.check_text(typed.get(name), required=False, limit=validation.LONG)
        if problem:
            errors[name] = problem
    if errors:
        raise FormErrors(errors)
    return scores


def parse_tier(typed: Typed, errors: dict[str, str]) -> str:
    tier = typed.get("tier")
    if tier not in review.TIERS:
        errors["tier"] = TIER_MESSAGE
    return tier


# refusals that are answers of their own, never a message on a form
REFUSALS = (apps.PermissionDenied, apps.TransitionNotAllowed, apps.DeadlinePassed)


@contextmanager
def domain_refusals() -> Iterator[None]:
    """The domain's refusals as answers: permission 403, state 409, anything else a message
    on the form that was sent."""
    try:
        yield
    except apps.PermissionDenied as e:
        raise web.HTTPError(403, str(e)) from None
    except (apps.TransitionNotAllowed, apps.DeadlinePassed) as e:
        raise web.HTTPError(409, str(e)) from None
    except apps.ApplicationError as e:
        raise FormErrors({"_form": str(e)}) from None


# ---- handlers ----------------------------------------------------------------------------------


class ReviewPagesHandler(BaseHandler):
    """A page is its ``show`` (a POST that fails shows it again with errors and the input);
    the classes that only take forms allow POST alone."""

    @web.authenticated
    def get(self, *path_args: str):
        self.show(*path_args)

    def typed(self) -> Typed:
        return Typed({name: self.get_body_arguments(name) for name in self.request.body_arguments})

    def render_page(self, template: str, **ns) -> None:
        super().render_page(
            template,
            taipei_text=taipei_text,
            last_second_text=last_second_text,
            hundredths=hundredths,
            http_url=http_url,
            status_labels=application_form.STATUS_LABELS,
            category_labels=application_form.CATEGORY_LABELS,
            document_parts=application_form.parts_for,
            value_at=application_form.value_at,
            file_parts={path: part for part, path in application_form.FILE_PARTS.items()},
            **ns,
        )

    @contextmanager
    def unit_of_work(self) -> Iterator[tuple[Session, Account]]:
        """A transaction with the signed-in person's account; refusals mapped to HTTP."""
        with self.db() as db, domain_refusals():
            yield db, self.account(db)


class OperatorHandler(ReviewPagesHandler):
    """Operators only (the hub's scope; the domain checks the account too). A person not
    signed in is sent to sign in by ``@web.authenticated``."""

    async def prepare(self):
        await super().prepare()
        if self.current_user is not None and not self.is_operator:
            raise web.HTTPError(403, "只有營運管理員可以使用 / operators only")

    def application_url(self, application_id: int, **query: str) -> str:
        suffix = "?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else ""
        return f"{self.service.service_prefix}admin/applications/{application_id}{suffix}"


class RoundsPage(OperatorHandler):
    """Every round, and a new one."""

    def show(self, errors: dict[str, str] | None = None, typed: Typed = Typed()) -> None:
        with self.unit_of_work() as (db, operator):
            rounds = all_rounds(db, operator)
        now = utcnow()
        self.render_page(
            "operate_rounds.html",
            rounds=rounds,
            accepting=lambda r: apps.accepting(r, now),
            categories=list(Category),
            errors=errors or {},
            typed=typed,
        )

    @web.authenticated
    def post(self):
        typed = self.typed()
        try:
            form = parse_round(typed)
            with self.unit_of_work() as (db, operator):
                same_name = db.scalar(
                    select(Round).where(Round.name == form.name, Round.category == form.category)
                )
                if same_name is None:
                    apps.create_round(
                        db,
                        operator,
                        name=form.name,
                        category=form.category,
                        opens_at=form.opens_at,
                        closes_at=form.closes_at,
                        now=utcnow(),
                    )
                elif (same_name.opens_at, same_name.closes_at) != (form.opens_at, form.closes_at):
                    raise FormErrors(
                        {
                            "name": message(
                                "同類別已有同名的梯次", "this category already has a round so named"
                            )
                        }
                    )
                # else: the same round sent again (a double click): it exists once
        except FormErrors as e:
            self.set_status(400)
            return self.show(e.errors, typed)
        self.redirect(f"{self.service.service_prefix}admin/rounds", status=303)


class QueuePage(OperatorHandler):
    """Applications by round, category and status (a GET form: the filters are in the URL)."""

    @web.authenticated
    def get(self):
        round_text = self.get_query_argument("round", "")
        category = self.get_query_argument("category", "")
        status = self.get_query_argument("status", "")
        round_id = int(round_text) if round_text.isdigit() else None
        category = category if category in set(Category) else ""
        status = status if status in set(A) - {A.DRAFT} else ""
        with self.unit_of_work() as (db, operator):
            rows = queue(db, operator, round_id=round_id, category=category, status=status)
            rounds = {r["round"].id: r["round"] for r in all_rounds(db, operator)}
        self.render_page(
            "operate_queue.html",
            applications=rows,
            rounds=rounds,
            chosen={"round": round_id, "category": category, "status": status},
            categories=list(Category),
            statuses=[s for s in A if s is not A.DRAFT],
        )


class ApplicationPage(OperatorHandler):
    """One application as the operator works on it."""

    def show(
        self,
        application_id: str,
        *,
        form: str = "",
        errors: dict[str, str] | None = None,
        typed: Typed = Typed(),
    ) -> None:
        settings = self.service.review_settings
        with self.unit_of_work() as (db, operator):
            application = apps.get(db, operator, int(application_id))
            status = A(application.status)
            supplement = apps.current_request(db, application)
            view = {
                "application": application,
                "round": db.get(Round, application.round_id),
                "documents": apps.documents(application),
                "checks": apps.qualification(db, operator, application),
                "history": apps.history(db, operator, application.id),
                "supplement": supplement,
                "supplement_fields": json.loads(supplement.fields) if supplement else [],
                "assignments": assignments(db, application),
                "reviewers": [
                    (person, review.obvious_conflicts(db, person, application))
                    for person in reviewers(db)
                ],
                "aggregate": review.aggregate(db, application, settings),
                "award": (
                    awards.view(db, operator, application.project_id)
                    if status is A.AWARDED
                    else None
                ),
                "supplement_choices": supplement_choices(application.category),
                "criteria": apps.CRITERIA,
            }
        self.render_page(
            "operate_application.html",
            **view,
            status=status,
            settings=settings,
            supporting=supporting_fields(application.category),
            today=taipei(utcnow()).date(),
            notice=self.get_query_argument("done", ""),
            form=form,
            errors=errors or {},
            typed=typed,
        )


def reason_typed(typed: Typed) -> str:
    """The reason the applicant will read: required, at most validation.LONG characters."""
    reason = typed.get("reason").strip()
    problem = validation.check_text(reason, limit=validation.LONG)
    if problem:
        raise FormErrors({"reason": problem})
    return reason


class ApplicationAction(ApplicationPage):
    """The qualification review's and the assignment's forms; after success back to the
    application (post/redirect/get); a form sent again changes nothing twice."""

    SUPPORTED_METHODS = ("POST",)

    ACTIONS = (
        "qualification", "criterion", "qualify", "reject", "supplement", "assign", "withdraw",
    )  # fmt: skip

    @web.authenticated
    def post(self, application_id: str, action: str):
        typed = self.typed()
        form = action if action != "criterion" else f"criterion-{typed.get('criterion')}"
        try:
            with self.unit_of_work() as (db, operator):
                application = apps.get(db, operator, int(application_id))
                getattr(self, action)(db, operator, application, typed, utcnow())
        except FormErrors as e:
            self.set_status(400)
            return self.show(application_id, form=form, errors=e.errors, typed=typed)
        self.redirect(self.application_url(int(application_id), done=action), status=303)

    def qualification(
        self, db: Session, operator: Account, application: Application, typed: Typed, now: datetime
    ) -> None:
        if application.status != A.QUALIFICATION:
            apps.start_qualification(db, operator, application, now=now)

    def criterion(
        self, db: Session, operator: Account, application: Application, typed: Typed, now: datetime
    ) -> None:
        name, verdict = typed.get("criterion"), typed.get("passed")
        if name not in apps.CRITERIA:
            raise web.HTTPError(400, f"沒有這個審查項目 / no criterion {name!r}")
        if verdict not in ("pass", "fail"):
            raise FormErrors({"passed": message("請選擇通過或未通過", "choose pass or fail")})
        note = typed.get("note").strip()
        problem = validation.check_text(note, required=verdict == "fail", limit=validation.LONG)
        if problem:
            raise FormErrors({"note": problem})
        apps.record_criterion(
            db, operator, application, name, verdict == "pass", note=note, now=now
        )

    def qualify(
        self, db: Session, operator: Account, application: Application, typed: Typed, now: datetime
    ) -> None:
        if application.status != A.PROFESSIONAL_REVIEW:
            apps.qualify(db, operator, application, now=now)

    def reject(
        self, db: Session, operator: Account, application: Application, typed: Typed, now: datetime
    ) -> None:
        if application.status == A.REJECTED:
            return
        apps.reject(db, operator, application, reason=reason_typed(typed), now=now)

    def supplement(
        self, db: Session, operator: Account, application: Application, typed: Typed, now: datetime
    ) -> None:
        if application.status == A.SUPPLEMENT_REQUESTED:
            return
        errors: dict[str, str] = {}
        fields = list(dict.fromkeys(typed.all("fields") + entries(typed.get("other_fields"))))
        if not fields:
            errors["fields"] = message("請勾選要補正的欄位", "tick the fields to supply")
        text = typed.get("message").strip()
        problem = validation.check_text(text, limit=validation.LONG)
        if problem:
            errors["message"] = problem
        due_day = parse_day(typed.get("due_day"), errors, "due_day")
        if due_day is not None and apps.deadline_after(due_day) <= now:
            errors["due_day"] = message("補件期限應在今天或以後", "the deadline is today or later")
        if errors:
            raise FormErrors(errors)
        try:
            apps.request_supplement(
                db, operator, application, fields=fields, message=text, due_day=due_day, now=now
            )
        except REFUSALS:
            raise
        except apps.ApplicationError as e:
            raise FormErrors({"fields": str(e)}) from None

    def withdraw(
        self, db: Session, operator: Account, application: Application, typed: Typed, now: datetime
    ) -> None:
        """The operator withdraws an application at any open step (e.g. the company asked by
        letter), with the reason the applicant reads."""
        if application.status == A.WITHDRAWN:
            return
        apps.withdraw(db, operator, application, reason=reason_typed(typed), now=now)

    def assign(
        self, db: Session, operator: Account, application: Application, typed: Typed, now: datetime
    ) -> None:
        """Every ticked reviewer or none: a refusal (a conflict of interest, too many
        reviewers) comes back next to that reviewer, with the ticks kept."""
        chosen = [int(v) for v in typed.all("reviewer") if v.isdigit()]
        if not chosen:
            raise FormErrors({"reviewer": message("請勾選審查委員", "tick the reviewers")})
        active = {
            v.reviewer.id for v in assignments(db, application) if v.assignment.recused_at is None
        }
        errors = {}
        for reviewer_id in chosen:
            person = db.get(Account, reviewer_id)
            if person is None or reviewer_id in active:
                continue  # sent again: already assigned
            try:
                review.assign(
                    db,
                    operator,
                    application,
                    person,
                    now=now,
                    settings=self.service.review_settings,
                )
            except REFUSALS:
                raise
            except apps.ApplicationError as e:
                errors[f"reviewer-{reviewer_id}"] = str(e)
        if errors:
            raise FormErrors(errors)


class RankingPage(OperatorHandler):
    """A round's ranking; inference: the pass mark's result; training: the review meeting."""

    def show(
        self,
        round_id: str,
        *,
        row: int | None = None,
        errors: dict[str, str] | None = None,
        typed: Typed = Typed(),
    ):
        settings = self.service.review_settings
        with self.unit_of_work() as (db, operator):
            round_ = db.get(Round, int(round_id))
            if round_ is None:
                raise web.HTTPError(404, "沒有這個梯次 / no such round")
            rows = review.ranking(db, operator, round_, settings)
        self.render_page(
            "operate_ranking.html",
            round=round_,
            rows=rows,
            settings=settings,
            tier_points=self.service.award_settings.tier_points,
            tiers=review.TIERS,
            row=row,
            errors=errors or {},
            typed=typed,
        )


class DecisionAction(RankingPage):
    """Inference: apply the pass mark with the tier; training: the meeting's decision."""

    SUPPORTED_METHODS = ("POST",)

    @web.authenticated
    def post(self, application_id: str):
        typed = self.typed()
        settings, now = self.service.review_settings, utcnow()
        try:
            with self.unit_of_work() as (db, operator):
                application = apps.get(db, operator, int(application_id))
                round_id = application.round_id
                if application.status == A.PROFESSIONAL_REVIEW:  # else: decided already
                    self.decide(db, operator, application, typed, now, settings)
        except FormErrors as e:
            self.set_status(400)
            return self.show(str(round_id), row=int(application_id), errors=e.errors, typed=typed)
        self.redirect(
            f"{self.service.service_prefix}admin/rounds/{round_id}#application-{application_id}",
            status=303,
        )

    @staticmethod
    def decide(
        db: Session,
        operator: Account,
        application: Application,
        typed: Typed,
        now: datetime,
        settings: review.ReviewSettings,
    ) -> None:
        errors: dict[str, str] = {}
        if application.category == Category.INFERENCE:
            tier = parse_tier(typed, errors)
            if errors:
                raise FormErrors(errors)
            review.decide_inference(
                db, operator, application, tier=tier, now=now, settings=settings
            )
            return
        decision = typed.get("decision")
        if decision not in ("selected", "not_selected"):
            errors["decision"] = message("請選擇入選或未入選", "choose selected or not selected")
        selected = decision == "selected"
        tier = parse_tier(typed, errors) if selected else None
        note = typed.get("note").strip()
        problem = validation.check_text(note, required=False, limit=validation.LONG)
        if problem:
            errors["note"] = problem
        if errors:
            raise FormErrors(errors)
        review.record_meeting_decision(
            db,
            operator,
            application,
            selected=selected,
            tier=tier,
            note=note,
            now=now,
            settings=settings,
        )


class AwardPage(OperatorHandler):
    """The award of a selected application: notice date, trusted addresses, trainees."""

    def show(
        self, application_id: str, *, errors: dict[str, str] | None = None, typed: Typed = Typed()
    ) -> None:
        settings = self.service.award_settings
        with self.unit_of_work() as (db, operator):
            application = apps.get(db, operator, int(application_id))
            if application.status == A.AWARDED:
                return self.redirect(self.application_url(application.id))
            if application.status != A.SELECTED:
                raise web.HTTPError(
                    409, "只有入選的申請案可以核定 / only a selected application can be awarded"
                )
            company = apps.documents(application)["company"]
        today = taipei(utcnow()).date()
        start, end = window_for_notice(today, settings.window_months)
        self.render_page(
            "operate_award.html",
            application=application,
            people={role: company.get(role) or {} for role in ("lead", "contact")},
            points=settings.tier_points[application.tier],
            settings=settings,
            today=today,
            example_window=(taipei_text(start), last_second_text(end)),
            errors=errors or {},
            typed=typed,
        )

    @web.authenticated
    def post(self, application_id: str):
        typed = self.typed()
        settings = self.service.award_settings
        try:
            with self.unit_of_work() as (db, operator):
                application = apps.get(db, operator, int(application_id))
                if application.status == A.AWARDED:  # sent again: granted once, show it
                    return self.redirect(self.application_url(application.id), status=303)
                notice_date, networks, trainees = self.parse(application, typed)
                result = awards.award(
                    db,
                    operator,
                    application,
                    notice_date=notice_date,
                    now=utcnow(),
                    trusted=networks,
                    trainees=trainees,
                    settings=settings,
                )
                project_id, api_key = result.project.id, result.api_key
        except FormErrors as e:
            self.set_status(400)
            return self.show(application_id, errors=e.errors, typed=typed)
        if api_key is None:
            return self.redirect(
                self.application_url(int(application_id), done="award"), status=303
            )
        # the company's key exists only here, once: not stored, not cached, not redirected to
        self.set_header("Cache-Control", "no-store")
        self.render_page(
            "operate_api_key.html",
            application_id=int(application_id),
            project_id=project_id,
            api_key=api_key,
        )

    @staticmethod
    def parse(application: Application, typed: Typed) -> tuple[date, list[str], list[str]]:
        errors: dict[str, str] = {}
        notice_date = parse_day(typed.get("notice_date"), errors, "notice_date")
        networks: list[str] = []
        if application.category == Category.TRAINING:
            try:
                networks = awards.parse_networks(entries(typed.get("networks")))
            except apps.ApplicationError as e:
                errors["networks"] = str(e)
            else:
                if not networks:
                    errors["networks"] = message(
                        "請登錄公司的固定 IP（可多筆）",
                        "give the company's trusted fixed addresses (one or more)",
                    )
        trainees = entries(typed.get("trainees"))
        bad = [e for e in trainees if validation.check_email(e)]
        if bad:
            errors["trainees"] = message(
                f"電子郵件格式不正確：{', '.join(bad)}", f"not e-mail addresses: {', '.join(bad)}"
            )
        if errors:
            raise FormErrors(errors)
        return notice_date, networks, trainees


class AwardAction(ApplicationPage):
    """After the award: the trusted addresses (training), the API key's revocation (inference)."""

    SUPPORTED_METHODS = ("POST",)

    @web.authenticated
    def post(self, application_id: str, action: str):
        typed = self.typed()
        try:
            with self.unit_of_work() as (db, operator):
                application = apps.get(db, operator, int(application_id))
                record = db.scalar(select(Award).where(Award.application_id == application.id))
                if record is None:
                    raise web.HTTPError(409, "申請案尚未核定 / the application is not awarded")
                now = utcnow()
                if action == "revoke-key":
                    awards.revoke_api_key(db, operator, record, now=now)
                else:
                    try:
                        awards.set_trusted_networks(
                            db, operator, record, entries(typed.get("networks")), now=now
                        )
                    except REFUSALS:
                        raise
                    except apps.ApplicationError as e:
                        raise FormErrors({"networks": str(e)}) from None
        except FormErrors as e:
            self.set_status(400)
            return self.show(application_id, form=action, errors=e.errors, typed=typed)
        self.redirect(self.application_url(int(application_id), done=action), status=303)


# ---- reviewers -------------------------------------------------------------------------------


class ReviewerHandler(ReviewPagesHandler):
    """Reviewers only; which applications they may open is the domain's (assigned, not
    recused)."""

    async def prepare(self):
        await super().prepare()
        if self.current_user is not None and not self.is_reviewer:
            raise web.HTTPError(403, "只有審查委員可以使用 / reviewers only")


class AssignmentsPage(ReviewerHandler):
    @web.authenticated
    def get(self):
        with self.unit_of_work() as (db, reviewer):
            mine = my_assignments(db, reviewer)
        self.render_page(
            "review_assignments.html",
            assignments=mine,
            recused=self.get_query_argument("recused", ""),
        )


class ReviewApplicationPage(ReviewerHandler):
    """The application's documents and the reviewer's score sheet; the conflict declaration."""

    def show(
        self,
        application_id: str,
        *,
        form: str = "",
        errors: dict[str, str] | None = None,
        typed: Typed = Typed(),
    ) -> None:
        settings = self.service.review_settings
        with self.unit_of_work() as (db, reviewer):
            opened = review.open_for_review(db, reviewer, int(application_id))
            application = db.get(Application, opened["id"])
            round_ = db.get(Round, application.round_id)
            # their own sheet: refused to anyone not assigned, an operator who reviews too
            sheet = review.my_sheet(db, reviewer, application)
            saved_scores = json.loads(sheet.scores) if sheet else {}
            weighted = None
            if sheet:  # the criteria's part of the total, computed again from the saved scores
                weighted = review.weighted_total(application.category, saved_scores)
                weighted = weighted.quantize(review.HUNDREDTH)
        # the sheet's form shows what was sent with it, else the saved sheet
        sheet_values = typed
        if form != "sheet":
            values = {f"score_{k}": [str(v)] for k, v in saved_scores.items()}
            if sheet:
                values["comment_to_applicant"] = [sheet.comment_to_applicant]
                values["private_comment"] = [sheet.private_comment]
            sheet_values = Typed(values)
        category = Category(application.category)
        self.render_page(
            "review_application.html",
            application=application,
            round=round_,
            documents={k: opened[k] for k in apps.SECTIONS},
            bonus_items=opened["bonus_items"],
            bonus_item_names=list(review.BONUS_ITEMS[category]),
            weights=review.WEIGHTS[category],
            settings=settings,
            sheet=sheet,
            total=hundredths(sheet.total_hundredths) if sheet else None,
            weighted=weighted,
            open_for_scoring=application.status == A.PROFESSIONAL_REVIEW,
            supporting=supporting_fields(category),
            saved=self.get_query_argument("saved", "") == "1",
            sheet_values=sheet_values,
            form=form,
            errors=errors or {},
            typed=typed,
        )

    @web.authenticated
    def post(self, application_id: str):
        """Save and submit the sheet (revisable until the decision); the total is computed."""
        typed = self.typed()
        try:
            with self.unit_of_work() as (db, reviewer):
                application = apps.get(db, reviewer, int(application_id))
                scores = parse_scores(application.category, typed)
                review.submit_sheet(
                    db,
                    reviewer,
                    application,
                    scores,
                    comment_to_applicant=typed.get("comment_to_applicant").strip(),
                    private_comment=typed.get("private_comment").strip(),
                    now=utcnow(),
                    settings=self.service.review_settings,
                )
        except FormErrors as e:
            self.set_status(400)
            return self.show(application_id, form="sheet", errors=e.errors, typed=typed)
        self.redirect(
            f"{self.service.service_prefix}review/applications/{int(application_id)}?saved=1",
            status=303,
        )


class ConflictAction(ReviewApplicationPage):
    """The reviewer declares a conflict of interest: recused, the application closes to them."""

    SUPPORTED_METHODS = ("POST",)

    @web.authenticated
    def post(self, application_id: str):
        typed = self.typed()
        reason = typed.get("reason").strip()
        done = f"{self.service.service_prefix}review?recused={int(application_id)}"
        try:
            with self.unit_of_work() as (db, reviewer):
                mine = my_assignment(db, reviewer, int(application_id))
                if mine is not None and mine.assignment.recused_at is not None:
                    return self.redirect(done, status=303)  # sent again: recused once
                application = apps.get(db, reviewer, int(application_id))
                problem = validation.check_text(reason, limit=validation.LONG)
                if problem:
                    raise FormErrors({"reason": problem})
                review.declare_conflict(db, reviewer, application, reason=reason, now=utcnow())
        except FormErrors as e:
            self.set_status(400)
            return self.show(application_id, form="conflict", errors=e.errors, typed=typed)
        self.redirect(done, status=303)


def routes() -> list[tuple[str, type]]:
    actions = "|".join(ApplicationAction.ACTIONS)
    return [
        (r"admin/rounds", RoundsPage),
        (r"admin/rounds/(\d+)", RankingPage),
        (r"admin/applications", QueuePage),
        (r"admin/applications/(\d+)", ApplicationPage),
        (rf"admin/applications/(\d+)/({actions})", ApplicationAction),
        (r"admin/applications/(\d+)/decision", DecisionAction),
        (r"admin/applications/(\d+)/award", AwardPage),
        (r"admin/applications/(\d+)/(networks|revoke-key)", AwardAction),
        (r"review", AssignmentsPage),
        (r"review/applications/(\d+)", ReviewApplicationPage),
        (r"review/applications/(\d+)/conflict", ConflictAction),
    ]
