"""The REST API of applications, review and awards (issue 3), described in ``openapi.yaml``.

Thin handlers over ``applications``, ``review`` and ``awards``, which check every permission
themselves. Token authentication only (``APIHandler``); JSON in and out.

Who acts: the token's JupyterHub user, as the ``Account`` of the same username (made
without roles at the person's first visit). The account acts as an operator only while
the token also carries the operator scope, and as a reviewer only with the review scope: a
token made for a script, or a notebook server's own token, has fewer scopes than its
owner's roles and gets no more power than its scopes say (least privilege).

How the domain's refusals come back (always ``{"status", "reason", "message"}``, messages
Traditional Chinese first): not found or not yours to read → 404 ``not-found`` (one answer
for both, so ids disclose nothing); not allowed → 403 ``forbidden``; a status change the
transitions table does not allow (a second submit, a second award) → 409
``transition-not-allowed``; a round or supplement deadline passed → 409 ``deadline-passed``;
an obvious conflict of interest → 409 ``conflict-of-interest``; not now (not yet scored,
already assigned) → 409 ``conflict``; bad values → 422 ``invalid`` with ``errors`` (field →
message), and on submit or resubmit also the ``application`` as it was typed.

The clock is the tornado setting ``clock`` (the system's UTC clock unless set), so that a
test can put the server at 23:59:59 of a closing day.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, date, datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session
from tornado import web

from . import applications as apps
from . import awards, review, validation
from .handlers import APIHandler
from .models import (
    Account,
    Application,
    ApplicationStatus,
    Award,
    Category,
    Round,
    ScoreSheet,
)
from .timewindow import last_second, taipei, utcnow

NOT_FOUND = "找不到申請案或無權查看 / no such application, or not yours to see"


class Refusal(web.HTTPError):
    """An expected refusal: status, machine-readable reason, bilingual message, and what
    else the caller needs (``errors``, ``application``). Logged in one line, no traceback."""

    def __init__(self, status: int, message: str, reason: str, **extra: object):
        # tornado %-formats the log message: keep a literal "%" literal
        super().__init__(status, message.replace("%", "%%"), reason=reason)
        self.message, self.extra = message, extra


def invalid(errors: dict[str, str], **extra: object) -> Refusal:
    return Refusal(
        422, "資料有誤，請修正標示的欄位 / fix the fields marked", "invalid", errors=errors, **extra
    )


@contextmanager
def refusals() -> Iterator[None]:
    """The domain's exceptions as HTTP answers."""
    try:
        yield
    except apps.ValidationFailed as e:
        raise invalid(e.errors) from None
    except apps.PermissionDenied as e:
        raise Refusal(403, str(e), "forbidden") from None
    except apps.TransitionNotAllowed as e:
        raise Refusal(409, str(e), "transition-not-allowed") from None
    except apps.DeadlinePassed as e:
        raise Refusal(409, str(e), "deadline-passed") from None
    except review.ConflictOfInterest as e:
        raise Refusal(409, str(e), "conflict-of-interest") from None
    except apps.StateConflict as e:
        raise Refusal(409, str(e), "conflict") from None
    except apps.ApplicationError as e:
        raise invalid({e.field or "request": str(e)}) from None


# ---- request bodies -------------------------------------------------------------------------


class Fields:
    """A JSON body's fields read with their types; each bad field gets its message, and
    ``done`` refuses the request once with all of them."""

    def __init__(self, body: dict):
        self.body, self.errors = body, {}

    def _bad(self, name: str, zh: str, en: str) -> None:
        self.errors[name] = validation.message(zh, en)

    def text(self, name: str, *, required: bool = True, limit: int = validation.SHORT) -> str:
        value = self.body.get(name, "")
        if not isinstance(value, str):
            self._bad(name, "應為文字", "must be a string")
            return ""
        message = validation.check_text(value, required=required, limit=limit)
        if message:
            self.errors[name] = message
        return value.strip()

    def choice(self, name: str, allowed: tuple[str, ...]) -> str:
        value = self.body.get(name)
        if value not in allowed:
            self._bad(name, f"應為 {'、'.join(allowed)} 之一", f"one of {', '.join(allowed)}")
            return ""
        return value

    def flag(self, name: str) -> bool:
        value = self.body.get(name)
        if not isinstance(value, bool):
            self._bad(name, "應為 true 或 false", "must be true or false")
            return False
        return value

    def identifier(self, name: str) -> int:
        value = self.body.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self._bad(name, "應為正整數編號", "must be a positive whole number")
            return 0
        return value

    def moment(self, name: str) -> datetime | None:
        """ISO 8601 with its UTC offset (2026-10-31T00:00:00+08:00), returned in UTC."""
        try:
            value = datetime.fromisoformat(self.body.get(name, ""))
        except (TypeError, ValueError):
            value = None
        if value is None or value.tzinfo is None:
            self._bad(
                name,
                "時間應為含時區的 ISO 8601，例如 2026-10-31T00:00:00+08:00",
                "an ISO 8601 time with its offset, e.g. 2026-10-31T00:00:00+08:00",
            )
            return None
        return value.astimezone(UTC)

    def day(self, name: str) -> date | None:
        value = validation.parse_date(self.body.get(name))
        if value is None:
            self._bad(name, "日期格式應為 YYYY-MM-DD", "a date is written YYYY-MM-DD")
        return value

    def strings(self, name: str) -> list[str]:
        value = self.body.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self._bad(name, "應為文字清單", "must be a list of strings")
            return []
        return value

    def business_number(self, name: str) -> str:
        """Optional; when given, eight digits with a valid check digit."""
        value = self.text(name, required=False, limit=8)
        message = validation.check_business_number(value) if value else None
        if message:
            self.errors[name] = message
        return value

    def document(self, name: str, *, required: bool = False) -> dict | None:
        value = self.body.get(name)
        if (value is None and required) or (value is not None and not isinstance(value, dict)):
            self._bad(name, "應為 JSON 物件", "must be a JSON object")
            return None
        return value

    def done(self) -> None:
        if self.errors:
            raise invalid(self.errors)


# ---- answers --------------------------------------------------------------------------------


def jsonable(value):
    """Times in Asia/Taipei with their offset, days as YYYY-MM-DD, exact decimals as strings."""
    if isinstance(value, datetime):
        return taipei(value).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {key: jsonable(v) for key, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def round_json(round_: Round, now: datetime) -> dict:
    return jsonable(
        {
            "id": round_.id,
            "name": round_.name,
            "category": round_.category,
            "opens_at": round_.opens_at,
            "closes_at": round_.closes_at,
            "last_second": last_second(round_.closes_at),
            "accepting": apps.accepting(round_, now),
        }
    )


def application_json(db: Session, actor: Account, application: Application) -> dict:
    request = apps.current_request(db, application)
    return jsonable(
        {
            "id": application.id,
            "round_id": application.round_id,
            "category": application.category,
            "status": application.status,
            "company_name": application.company_name,
            "business_number": application.business_number,
            "startup_priority": application.startup_priority,
            "tier": application.tier,
            "project_id": application.project_id,
            "created_at": application.created_at,
            "updated_at": application.updated_at,
            "submitted_at": application.submitted_at,
            "documents": apps.documents(application),
            "bonus_items": review.bonus_items(application),
            "supplement": None
            if request is None
            else {
                "fields": json.loads(request.fields),
                "message": request.message,
                "requested_at": request.requested_at,
                "due_before": request.due_before,
                "last_second": last_second(request.due_before),
            },
            # the reviewers' words to the company, once decided: for it and the operators
            "comments_to_applicant": review.comments_for_applicant(db, actor, application.id)
            if actor.is_operator or apps.is_owner(actor, application)
            else [],
        }
    )


def sheet_json(application: Application, sheet: ScoreSheet | None, bonus_per_item) -> dict:
    return jsonable(
        {
            "application_id": application.id,
            "weights": review.WEIGHTS[Category(application.category)],
            "bonus_items": review.bonus_items(application),
            "bonus_per_item": bonus_per_item,
            "scores": None if sheet is None else json.loads(sheet.scores),
            "total": None if sheet is None else Decimal(sheet.total_hundredths).scaleb(-2),
            "comment_to_applicant": "" if sheet is None else sheet.comment_to_applicant,
            "private_comment": "" if sheet is None else sheet.private_comment,
            "saved_at": None if sheet is None else sheet.submitted_at,
        }
    )


# ---- the handlers' common part ---------------------------------------------------------------


class ApplicationsHandler(APIHandler):
    async def prepare(self):
        await super().prepare()
        # callers are people: a hub service named like a person must not act as them
        if self.current_user.get("kind", "user") != "user":
            raise Refusal(403, "只接受個人的 token / a person's token is required", "forbidden")

    def now(self) -> datetime:
        return self.settings.get("clock", utcnow)()

    def body(self) -> Fields:
        return Fields(self.read_json())

    def actor(self, db: Session) -> Account:
        """The caller as the domain sees them: their account (made at the first visit,
        ``BaseHandler.account``) with the operator and reviewer roles only as far as the
        token's scopes reach. Never added to the session, so the roles it holds for this
        request are not stored."""
        stored = self.account(db)
        return Account(
            id=stored.id,
            username=stored.username,
            email=stored.email,
            display_name=stored.display_name,
            is_operator=stored.is_operator and self.is_operator,
            is_reviewer=stored.is_reviewer and self.is_reviewer,
        )

    def application_for(
        self, db: Session, actor: Account, application_id: str, *, lock: bool = False
    ) -> Application:
        """The application, if ``actor`` may read it. ``lock``: changes to one application
        wait for each other (a double submit finds the first one done, and gets 409)."""
        if lock:
            db.get(Application, int(application_id), with_for_update=True)
        try:
            return apps.get(db, actor, int(application_id))
        except apps.PermissionDenied:
            raise Refusal(404, NOT_FOUND, "not-found") from None

    def award_for(self, db: Session, project_id: str, *, lock: bool = False) -> Award:
        record = awards.award_of(db, int(project_id), lock=lock)
        if record is None:
            raise Refusal(404, "這個計畫沒有核定資料 / this project has no award", "not-found")
        return record

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if not isinstance(exc, Refusal):
            return super().write_error(status_code, **kwargs)
        answer = {"status": status_code, "reason": exc.reason, "message": exc.message}
        self.write_json(answer | exc.extra, status_code)


def account_named(db: Session, username: str) -> Account | None:
    return db.scalar(select(Account).where(Account.username == username))


# ---- rounds ---------------------------------------------------------------------------------


class RoundsAPI(ApplicationsHandler):
    def get(self):
        now = self.now()
        with self.db() as db:
            answer = [round_json(r, now) for r in apps.rounds(db)]
        self.write_json(answer)

    def post(self):
        fields = self.body()
        name = fields.text("name")
        category = fields.choice("category", tuple(Category))
        opens_at, closes_at = fields.moment("opens_at"), fields.moment("closes_at")
        with self.db() as db, refusals():
            actor = self.actor(db)
            apps.require_operator(actor)
            fields.done()
            round_ = apps.create_round(
                db,
                actor,
                name=name,
                category=category,
                opens_at=opens_at,
                closes_at=closes_at,
                now=self.now(),
            )
            answer = round_json(round_, self.now())
        self.write_json(answer, 201)


class RankingAPI(ApplicationsHandler):
    def get(self, round_id: str):
        with self.db() as db, refusals():
            actor = self.actor(db)
            apps.require_operator(actor)
            round_ = db.get(Round, int(round_id))
            if round_ is None:
                raise Refusal(404, "沒有這個梯次 / no such round", "not-found")
            answer = jsonable(review.ranking(db, actor, round_, self.service.review_settings))
        self.write_json(answer)


# ---- applications ---------------------------------------------------------------------------


class ApplicationsAPI(ApplicationsHandler):
    def get(self):
        """The caller's own applications; ``all=true``: every one (operators), of one round
        (``round_id``) or in one status (``status``)."""
        round_id = self.get_query_argument("round_id", "")
        status = self.get_query_argument("status", "")
        errors = {}
        if round_id and not round_id.isdigit():
            errors["round_id"] = validation.message("應為梯次編號", "must be a round id")
        if status and status not in tuple(ApplicationStatus):
            errors["status"] = validation.message(
                "沒有這個狀態", f"one of {', '.join(ApplicationStatus)}"
            )
        with self.db() as db, refusals():
            actor = self.actor(db)
            if self.get_query_argument("all", "") != "true":
                found = apps.mine(db, actor)
            else:
                apps.require_operator(actor)
                if errors:
                    raise invalid(errors)
                found = apps.every(
                    db,
                    actor,
                    round_id=int(round_id) if round_id else None,
                    status=ApplicationStatus(status) if status else None,
                )
            answer = [jsonable(asdict(s)) for s in found]
        self.write_json(answer)

    def post(self):
        fields = self.body()
        round_id = fields.identifier("round_id")
        fields.done()
        with self.db() as db, refusals():
            round_ = db.get(Round, round_id)
            if round_ is None:
                raise invalid({"round_id": "沒有這個梯次 / no such round"})
            actor = self.actor(db)
            application = apps.create_draft(db, actor, round_, now=self.now())
            answer = application_json(db, actor, application)
        self.write_json(answer, 201)


class ApplicationAPI(ApplicationsHandler):
    def get(self, application_id: str):
        with self.db() as db:
            actor = self.actor(db)
            answer = application_json(db, actor, self.application_for(db, actor, application_id))
        self.write_json(answer)

    def patch(self, application_id: str):
        """Save the draft: the parts given replace those stored, as typed; the others stay."""
        fields = self.body()
        parts = {name: fields.document(name) for name in apps.SECTIONS}
        with self.db() as db, refusals():
            actor = self.actor(db)
            application = self.application_for(db, actor, application_id, lock=True)
            fields.done()
            errors = apps.save_draft(db, actor, application, now=self.now(), **parts)
            answer = {"application": application_json(db, actor, application), "errors": errors}
        self.write_json(answer)


class SubmitAPI(ApplicationsHandler):
    """Draft → submitted: every field valid, the round still open by the server clock."""

    action: Callable = staticmethod(apps.submit)

    def post(self, application_id: str):
        with self.db() as db:
            actor = self.actor(db)
            application = self.application_for(db, actor, application_id, lock=True)
            typed = application_json(db, actor, application)
            with refusals():
                try:
                    self.action(db, actor, application, now=self.now())
                except apps.ValidationFailed as e:
                    raise invalid(e.errors, application=typed) from None
            answer = application_json(db, actor, application)
        self.write_json(answer)


class ResubmitAPI(SubmitAPI):
    """Supplement requested → resubmitted, before the supplement's deadline."""

    action = staticmethod(apps.resubmit)


class WithdrawAPI(ApplicationsHandler):
    def post(self, application_id: str):
        fields = self.body()
        reason = fields.text("reason", required=False, limit=validation.LONG)
        with self.db() as db, refusals():
            actor = self.actor(db)
            application = self.application_for(db, actor, application_id, lock=True)
            fields.done()
            apps.withdraw(db, actor, application, reason=reason, now=self.now())
            answer = application_json(db, actor, application)
        self.write_json(answer)


class HistoryAPI(ApplicationsHandler):
    def get(self, application_id: str):
        with self.db() as db:
            actor = self.actor(db)
            application = self.application_for(db, actor, application_id)
            answer = [
                jsonable(
                    {
                        "at": c.at,
                        "actor": c.actor,
                        "old_status": c.old_status,
                        "new_status": c.new_status,
                        "reason": c.reason,
                    }
                )
                for c in apps.history(db, actor, application.id)
            ]
        self.write_json(answer)


class SupplementAPI(ApplicationsHandler):
    """The applicant's answer to a supplement request: only the fields it lists change."""

    def post(self, application_id: str):
        fields = self.body()
        changes = fields.document("changes", required=True)
        with self.db() as db, refusals():
            actor = self.actor(db)
            application = self.application_for(db, actor, application_id, lock=True)
            fields.done()
            errors = apps.supplement(db, actor, application, changes, now=self.now())
            answer = {"application": application_json(db, actor, application), "errors": errors}
        self.write_json(answer)


# ---- qualification (operators) ----------------------------------------------------------------


class OperatorHandler(ApplicationsHandler):
    def operator_and_application(self, db: Session, application_id: str, *, lock: bool = False):
        """Operators only (403 before anything is read), then the application."""
        actor = self.actor(db)
        apps.require_operator(actor)
        return actor, self.application_for(db, actor, application_id, lock=lock)


class QualificationAPI(OperatorHandler):
    def get(self, application_id: str):
        with self.db() as db, refusals():
            actor, application = self.operator_and_application(db, application_id)
            answer = jsonable(apps.qualification(db, actor, application))
        self.write_json(answer)

    def post(self, application_id: str):
        """Start the qualification review: the automatic checks run with their evidence."""
        with self.db() as db, refusals():
            actor, application = self.operator_and_application(db, application_id, lock=True)
            apps.start_qualification(db, actor, application, now=self.now())
            answer = jsonable(apps.qualification(db, actor, application))
        self.write_json(answer)


class CriterionAPI(OperatorHandler):
    def put(self, application_id: str, criterion: str):
        fields = self.body()
        passed = fields.flag("passed")
        note = fields.text("note", required=False, limit=validation.LONG)
        with self.db() as db, refusals():
            actor, application = self.operator_and_application(db, application_id, lock=True)
            fields.done()
            apps.record_criterion(
                db, actor, application, criterion, passed, note=note, now=self.now()
            )
            answer = jsonable(apps.qualification(db, actor, application))
        self.write_json(answer)


class QualifyAPI(OperatorHandler):
    def post(self, application_id: str):
        with self.db() as db, refusals():
            actor, application = self.operator_and_application(db, application_id, lock=True)
            apps.qualify(db, actor, application, now=self.now())
            answer = application_json(db, actor, application)
        self.write_json(answer)


class RejectAPI(OperatorHandler):
    def post(self, application_id: str):
        fields = self.body()
        reason = fields.text("reason", limit=validation.LONG)
        with self.db() as db, refusals():
            actor, application = self.operator_and_application(db, application_id, lock=True)
            fields.done()
            apps.reject(db, actor, application, reason=reason, now=self.now())
            answer = application_json(db, actor, application)
        self.write_json(answer)


class SupplementRequestAPI(OperatorHandler):
    def post(self, application_id: str):
        fields = self.body()
        wanted = fields.strings("fields")
        message = fields.text("message", required=False, limit=validation.LONG)
        due_day = fields.day("due_day")
        with self.db() as db, refusals():
            actor, application = self.operator_and_application(db, application_id, lock=True)
            fields.done()
            apps.request_supplement(
                db,
                actor,
                application,
                fields=wanted,
                message=message,
                due_day=due_day,
                now=self.now(),
            )
            answer = application_json(db, actor, application)
        self.write_json(answer, 201)


# ---- professional review ----------------------------------------------------------------------


class ReviewersAPI(OperatorHandler):
    def get(self, application_id: str):
        with self.db() as db, refusals():
            actor, application = self.operator_and_application(db, application_id)
            answer = jsonable(review.assignments(db, actor, application))
        self.write_json(answer)

    def post(self, application_id: str):
        fields = self.body()
        username = fields.text("reviewer", limit=255)
        with self.db() as db, refusals():
            actor, application = self.operator_and_application(db, application_id, lock=True)
            fields.done()
            reviewer = account_named(db, username)
            if reviewer is None:
                raise invalid({"reviewer": "沒有這個帳號 / no such account"})
            review.assign(
                db, actor, application, reviewer, now=self.now(),
                settings=self.service.review_settings,
            )  # fmt: skip
            answer = jsonable(review.assignments(db, actor, application))
        self.write_json(answer, 201)


class ReviewerProfileAPI(ApplicationsHandler):
    """Where a reviewer works, so that obvious conflicts block the assignment."""

    def put(self, username: str):
        fields = self.body()
        affiliation = fields.text("affiliation")
        business_number = fields.business_number("business_number")
        with self.db() as db, refusals():
            actor = self.actor(db)
            apps.require_operator(actor)
            fields.done()
            reviewer = account_named(db, username)
            if reviewer is None:
                raise Refusal(404, "沒有這個帳號 / no such account", "not-found")
            profile = review.set_profile(
                db,
                actor,
                reviewer,
                affiliation=affiliation,
                business_number=business_number,
                now=self.now(),
            )
            answer = {
                "username": reviewer.username,
                "affiliation": profile.affiliation,
                "business_number": profile.business_number,
            }
        self.write_json(answer)


class AssignmentsAPI(ApplicationsHandler):
    """The reviewer's own work list."""

    def get(self):
        with self.db() as db, refusals():
            answer = [jsonable(asdict(s)) for s in review.assigned_to(db, self.actor(db))]
        self.write_json(answer)


class ConflictAPI(ApplicationsHandler):
    """A reviewer declares a conflict of interest and is recused at once."""

    def post(self, application_id: str):
        fields = self.body()
        reason = fields.text("reason", limit=validation.LONG)
        with self.db() as db, refusals():
            actor = self.actor(db)
            application = self.application_for(db, actor, application_id, lock=True)
            fields.done()
            review.declare_conflict(db, actor, application, reason=reason, now=self.now())
            answer = {"application_id": application.id, "recused_at": jsonable(self.now())}
        self.write_json(answer)


class ScoreSheetAPI(ApplicationsHandler):
    """The reviewer's own sheet; the weighted total is computed, never typed. Saved again
    until the decision; it counts from its first save."""

    def get(self, application_id: str):
        with self.db() as db, refusals():
            actor = self.actor(db)
            application = self.application_for(db, actor, application_id)
            sheet = review.my_sheet(db, actor, application)
            answer = sheet_json(application, sheet, self.service.review_settings.bonus_per_item)
        self.write_json(answer)

    def put(self, application_id: str):
        fields = self.body()
        scores = fields.document("scores", required=True)
        to_applicant = fields.text("comment_to_applicant", required=False, limit=validation.LONG)
        private = fields.text("private_comment", required=False, limit=validation.LONG)
        settings = self.service.review_settings
        with self.db() as db, refusals():
            actor = self.actor(db)
            application = self.application_for(db, actor, application_id, lock=True)
            fields.done()
            sheet = review.submit_sheet(
                db,
                actor,
                application,
                scores,
                comment_to_applicant=to_applicant,
                private_comment=private,
                now=self.now(),
                settings=settings,
            )
            answer = sheet_json(application, sheet, settings.bonus_per_item)
        self.write_json(answer)


class AggregateAPI(OperatorHandler):
    def get(self, application_id: str):
        settings = self.service.review_settings
        with self.db() as db, refusals():
            _, application = self.operator_and_application(db, application_id)
            result = review.aggregate(db, application, settings)
            answer = jsonable(
                {
                    "application_id": application.id,
                    "totals": result.totals,
                    "mean": result.mean,
                    "spread": result.spread,
                    "sheets": len(result.totals),
                    "expected": result.expected,
                    "complete": result.complete,
                    "flagged": result.flagged(settings),
                }
            )
        self.write_json(answer)


class DecisionAPI(OperatorHandler):
    """Training: the review meeting's decision with the tier. Inference: the pass mark
    decides; the operator gives the tier a pass gets."""

    def post(self, application_id: str):
        fields = self.body()
        settings = self.service.review_settings
        with self.db() as db, refusals():
            actor, application = self.operator_and_application(db, application_id, lock=True)
            if application.category == Category.TRAINING:
                selected = fields.flag("selected")
                tier = fields.text("tier", required=selected, limit=4) or None
                note = fields.text("note", required=False, limit=validation.LONG)
                fields.done()
                review.record_meeting_decision(
                    db, actor, application, selected=selected, tier=tier, note=note,
                    now=self.now(), settings=settings,
                )  # fmt: skip
            else:
                tier = fields.text("tier", limit=4)
                fields.done()
                review.decide_inference(
                    db, actor, application, tier=tier, now=self.now(), settings=settings
                )
            answer = application_json(db, actor, application)
        self.write_json(answer)


# ---- awards -----------------------------------------------------------------------------------


class AwardAPI(OperatorHandler):
    """A selected application becomes a project with points, window and members; an
    inference company's API key is in this answer and nowhere else, ever."""

    def post(self, application_id: str):
        fields = self.body()
        notice_date = fields.day("notice_date")
        trusted = fields.strings("trusted_networks")
        trainees = fields.strings("trainees")
        with self.db() as db, refusals():
            actor, application = self.operator_and_application(db, application_id, lock=True)
            fields.done()
            result = awards.award(
                db,
                actor,
                application,
                notice_date=notice_date,
                now=self.now(),
                trusted=trusted,
                trainees=trainees,
                settings=self.service.award_settings,
            )
            answer = {
                "award": jsonable(awards.view(db, actor, result.project.id)),
                "api_key": result.api_key,
            }
        self.set_header("Cache-Control", "no-store")
        self.write_json(answer, 201)


class ProjectAwardAPI(ApplicationsHandler):
    def get(self, project_id: str):
        with self.db() as db:
            actor = self.actor(db)
            try:
                answer = jsonable(awards.view(db, actor, int(project_id)))
            except apps.PermissionDenied as e:
                raise Refusal(404, str(e), "not-found") from None
        self.write_json(answer)


class TrustedNetworksAPI(ApplicationsHandler):
    def put(self, project_id: str):
        fields = self.body()
        networks = fields.strings("trusted_networks")
        with self.db() as db, refusals():
            actor = self.actor(db)
            apps.require_operator(actor)
            fields.done()
            record = self.award_for(db, project_id, lock=True)
            saved = awards.set_trusted_networks(db, actor, record, networks, now=self.now())
        self.write_json({"trusted_networks": saved})


class TraineesAPI(ApplicationsHandler):
    def post(self, project_id: str):
        """The lead, the contact or an operator adds trainees by e-mail after the award."""
        fields = self.body()
        emails = fields.strings("trainees")
        with self.db() as db, refusals():
            actor = self.actor(db)
            fields.done()
            record = self.award_for(db, project_id, lock=True)
            added = awards.add_trainees(db, actor, record, emails, now=self.now())
            answer = jsonable(awards.view(db, actor, int(project_id)))
        self.write_json({"added": added, "award": answer})


class ApiKeyAPI(ApplicationsHandler):
    def post(self, project_id: str):
        """A new key (the lead, the contact or an operator): the old one stops at once;
        the new one is shown in this answer only."""
        with self.db() as db, refusals():
            actor = self.actor(db)
            record = self.award_for(db, project_id, lock=True)
            token = awards.regenerate_api_key(db, actor, record, now=self.now())
        self.set_header("Cache-Control", "no-store")
        self.write_json({"api_key": token, "prefix": token[:12]}, 201)

    def delete(self, project_id: str):
        """Operators revoke the company's key."""
        with self.db() as db, refusals():
            actor = self.actor(db)
            record = self.award_for(db, project_id, lock=True)
            revoked = awards.revoke_api_key(db, actor, record, now=self.now())
        self.write_json({"revoked": revoked})


def routes() -> list[tuple[str, type]]:
    application = r"api/v1/applications/(?P<application_id>\d+)"
    project = r"api/v1/projects/(?P<project_id>\d+)"
    return [
        (r"api/v1/rounds", RoundsAPI),
        (r"api/v1/rounds/(?P<round_id>\d+)/ranking", RankingAPI),
        (r"api/v1/applications", ApplicationsAPI),
        (application, ApplicationAPI),
        (application + r"/submit", SubmitAPI),
        (application + r"/withdraw", WithdrawAPI),
        (application + r"/history", HistoryAPI),
        (application + r"/supplement", SupplementAPI),
        (application + r"/resubmit", ResubmitAPI),
        (application + r"/qualification", QualificationAPI),
        (application + r"/qualification/(?P<criterion>[a-z_]+)", CriterionAPI),
        (application + r"/qualify", QualifyAPI),
        (application + r"/reject", RejectAPI),
        (application + r"/supplement-request", SupplementRequestAPI),
        (application + r"/reviewers", ReviewersAPI),
        (application + r"/conflict", ConflictAPI),
        (application + r"/score-sheet", ScoreSheetAPI),
        (application + r"/aggregate", AggregateAPI),
        (application + r"/decision", DecisionAPI),
        (application + r"/award", AwardAPI),
        (project + r"/award", ProjectAwardAPI),
        (project + r"/award/trusted-networks", TrustedNetworksAPI),
        (project + r"/award/api-key", ApiKeyAPI),
        (project + r"/award/trainees", TraineesAPI),
        (r"api/v1/reviewers/(?P<username>[^/]+)/profile", ReviewerProfileAPI),
        (r"api/v1/review/assignments", AssignmentsAPI),
    ]
