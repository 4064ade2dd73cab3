"""The applicant's pages: my applications and a new one, the form (draft, submit, supplement),
supporting files, status and history, the result, the award with the API key, withdrawal.

Thin: the rules are the domain's (``applications``, ``awards``, ``review``), the form's table
is ``application_form``; a refusal from the domain becomes a page with its reason. A request
that changes something does its database work on the event loop inside one transaction, with
the person's or the application's row locked, so that a second click finds the first one's
result: nothing is created, submitted or replaced twice.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy import select
from tornado import web

from . import application_form as form
from . import applications as apps
from . import awards, closing, review, validation
from .handlers import BaseHandler
from .models import (
    Account,
    Application,
    ApplicationStatus,
    Award,
    Project,
    Round,
    SupplementRequest,
)
from .project_pages import attachment
from .storage import LocalFileStore, StagedFiles
from .timewindow import last_second, taipei, utcnow

S = ApplicationStatus
NOT_YOURS = ("找不到申請案或無權查看", "no such application, or not yours to see")


def iso(moment: datetime | None) -> str | None:
    """A time as the pages show it (the ``when`` filter): in Asia/Taipei."""
    return None if moment is None else taipei(moment).isoformat()


def limits_of(service) -> closing.Limits:
    return closing.Limits(
        max_bytes=service.application_max_file_mb * closing.MIB,
        types=tuple(service.application_file_types),
    )


# ---- read models -------------------------------------------------------------------------


def accepting_rounds(db, now: datetime) -> list[Round]:
    """The rounds that accept applications now, by the server clock."""
    rounds = db.scalars(select(Round).where(Round.closes_at > now).order_by(Round.closes_at))
    return [r for r in rounds if apps.accepting(r, now)]


def unsaved_draft(db, actor: Account, round_: Round) -> Application | None:
    """The person's draft in ``round_`` that was never saved: a second click on "start"
    opens it instead of making another."""
    return db.scalar(
        select(Application)
        .where(
            Application.account_id == actor.id,
            Application.round_id == round_.id,
            Application.status == S.DRAFT,
            Application.company_data == "{}",
            Application.consent == "{}",
            Application.declarations == "{}",
            Application.proposal == "{}",
        )
        .order_by(Application.id)
        .limit(1)
    )


def latest_supplement(db, application: Application) -> SupplementRequest | None:
    return db.scalar(
        select(SupplementRequest)
        .where(SupplementRequest.application_id == application.id)
        .order_by(SupplementRequest.id.desc())
        .limit(1)
    )


def nothing(path: str) -> bool:
    return False


def everything(path: str) -> bool:
    return True


def editing(
    actor: Account, application: Application, request: SupplementRequest | None, now: datetime
) -> tuple[str, Callable[[str], bool]]:
    """What the person may change now: ``draft`` (every field), ``supplement`` (the fields
    the open request lists, until its deadline) or ``read`` (nothing)."""
    if not apps.is_owner(actor, application):
        return "read", nothing
    if application.status == S.DRAFT:
        return "draft", everything
    if (
        application.status == S.SUPPLEMENT_REQUESTED
        and request is not None
        and now < request.due_before
    ):
        listed = json.loads(request.fields)
        return "supplement", lambda path: apps.may_supplement(path, listed)
    return "read", nothing


def supplement_view(request: SupplementRequest | None, category: str, now: datetime) -> dict:
    if request is None:
        return {}
    return {
        "message": request.message,
        "fields": [(form.locate(f, category), f) for f in json.loads(request.fields)],
        "last_second": iso(last_second(request.due_before)),
        "passed": now >= request.due_before,
        "resolved": request.resolved_at is not None,
        "expired": request.expired_at is not None,
    }


def award_view(db, application: Application, actor: Account) -> dict | None:
    """Tier, points, window, members and the API key's prefix of an awarded application, and
    whether ``actor`` may add trainees to its project."""
    award = db.scalar(select(Award).where(Award.application_id == application.id))
    if award is None:
        return None
    key = awards.active_key(db, award)
    return {
        "tier": award.tier,
        "points": award.points,
        "window_start": iso(award.window_start),
        "window_last_second": iso(last_second(award.window_end)),
        "project_id": award.project_id,
        "project_name": db.get(Project, award.project_id).name,
        "members": awards.members_of(db, award.project_id),
        "key": None if key is None else {"prefix": key.prefix, "created_at": iso(key.created_at)},
        "may_add_trainees": awards.takes_trainees(db.get(Project, award.project_id))
        and awards.manages(db, actor, award),
    }


@contextmanager
def domain_refusals() -> Iterator[None]:
    """The domain's refusals as pages with their reason: not allowed 403, not now 409."""
    try:
        yield
    except apps.PermissionDenied as e:
        raise web.HTTPError(403, str(e)) from None
    except (apps.TransitionNotAllowed, apps.DeadlinePassed) as e:
        raise web.HTTPError(409, str(e)) from None


class Problems:
    """Messages by path and their summary at the top of the form (where each links to, with
    which label). ``hints``: what a saved draft still lacks; otherwise errors that stopped
    the request."""

    def __init__(self, messages: dict[str, str], category: str, *, hints: bool):
        self.messages, self.hints = messages, hints
        self.summary = [(form.locate(path, category), text) for path, text in messages.items()]

    def get(self, path: str) -> str | None:
        return self.messages.get(path)


def application_view(
    db, actor: Account, application: Application, request: SupplementRequest | None, now: datetime
) -> dict:
    """Everything the application's page shows besides the form."""
    return {
        "application": {
            "id": application.id,
            "status": application.status,
            "category": application.category,
            "company_name": application.company_name,
            "round": db.get(Round, application.round_id).name,
            "submitted_at": iso(application.submitted_at),
            "final": S(application.status) in apps.FINAL,
        },
        "history": [
            {
                "at": iso(h.at),
                "old": h.old_status,
                "new": h.new_status,
                "actor": h.actor,
                "reason": h.reason,
            }
            for h in apps.history(db, actor, application.id)
        ],
        "supplement": supplement_view(request, application.category, now),
        "award": award_view(db, application, actor),
        "comments": review.comments_for_applicant(db, actor, application.id),
    }


def attach_files(
    docs: dict,
    stored: dict,
    application_id: int,
    accepted: dict[str, closing.Upload],
    removed: set[str],
    editable: Callable[[str], bool],
    staged: StagedFiles,
) -> dict[str, dict | None]:
    """Write the accepted uploads, put their records into ``docs`` (None for a removed file)
    and mark the files they replace for removal after the commit; the changes by path."""
    changes = {}
    for path in form.FILE_PARTS.values():
        if not editable(path) or (path not in accepted and path not in removed):
            continue
        old = form.file_at(stored, path)
        if old is not None:
            staged.replace(old["key"])
        record = None
        if path in accepted:
            record, body = form.file_record(application_id, accepted[path])
            staged.save(record["key"], body)
        form.put(docs, path, record)
        changes[path] = record
    return changes


# ---- pages ---------------------------------------------------------------------------------


class ApplicationsPage(BaseHandler):
    """My applications, and the start of a new one in a round that accepts now."""

    def show(self, *, errors: dict[str, str] | None = None, chosen: str = "") -> None:
        now = utcnow()
        with self.db() as db:
            mine = apps.mine(db, self.account(db))
            names = {
                r.id: r.name
                for r in db.scalars(select(Round).where(Round.id.in_({a.round_id for a in mine})))
            }
            rounds = [
                {
                    "id": r.id,
                    "name": r.name,
                    "category": r.category,
                    "last_second": iso(last_second(r.closes_at)),
                }
                for r in accepting_rounds(db, now)
            ]
        self.render_page(
            "apply_list.html",
            applications=[
                {
                    "id": a.id,
                    "round": names[a.round_id],
                    "category": a.category,
                    "company_name": a.company_name,
                    "status": a.status,
                    "submitted_at": iso(a.submitted_at),
                }
                for a in mine
            ],
            rounds=rounds,
            errors=errors or {},
            chosen=chosen,
            status_labels=form.STATUS_LABELS,
            category_labels=form.CATEGORY_LABELS,
        )

    @web.authenticated
    def get(self):
        self.show()

    @web.authenticated
    def post(self):
        chosen = self.get_body_argument("round", "")
        now = utcnow()
        try:
            with self.db() as db:
                round_ = db.get(Round, int(chosen)) if chosen.isdigit() else None
                if round_ is None:
                    raise apps.ApplicationError("請選擇梯次與類別", "choose a round and category")
                actor = self.account(db)
                db.refresh(actor, with_for_update=True)  # one start at a time per person
                application = unsaved_draft(db, actor, round_) or apps.create_draft(
                    db, actor, round_, now=now
                )
                application_id = application.id
        except apps.ApplicationError as e:
            self.set_status(409 if isinstance(e, apps.DeadlinePassed) else 400)
            return self.show(errors={"round": str(e)}, chosen=chosen)
        self.redirect(f"{self.service.service_prefix}applications/{application_id}", status=303)


class ApplicationHandler(BaseHandler):
    """Finds the application in the URL for its owner or an operator (reviewers have their
    own pages); anyone else gets the domain's "no such application" answer."""

    def load(self, db, application_id: str, *, lock: bool = False) -> tuple[Account, Application]:
        actor = self.account(db)
        try:
            application = apps.get(db, actor, int(application_id))
            if not (actor.is_operator or apps.is_owner(actor, application)):
                raise apps.PermissionDenied(*NOT_YOURS)
        except apps.PermissionDenied as e:
            raise web.HTTPError(404, str(e)) from None
        if lock:  # a second click waits here, then sees the first one's result
            db.refresh(application, with_for_update=True)
        return actor, application

    @property
    def store(self) -> LocalFileStore:
        return LocalFileStore(self.service.files_dir)

    def application_url(self, application_id: int | str, flag: str = "") -> str:
        url = f"{self.service.service_prefix}applications/{int(application_id)}"
        return f"{url}?{flag}=1" if flag else url

    def show(
        self,
        application_id: str,
        *,
        typed: dict | None = None,
        errors: dict[str, str] | None = None,
        new_key: str = "",
        trainees: tuple[str, str] = ("", ""),
    ) -> None:
        """The application's page; ``typed`` documents stand in for the stored ones (a form
        that came back), ``errors`` are shown at their fields."""
        now = utcnow()
        with self.db() as db:
            actor, application = self.load(db, application_id)
            category = application.category
            docs = typed if typed is not None else apps.documents(application)
            request = latest_supplement(db, application)
            mode, editable = editing(actor, application, request, now)
            if errors:
                problems = Problems(errors, category, hints=False)
            elif mode != "read" and any(docs.values()):
                hints = validation.validate_application(
                    category=category, today=taipei(now).date(), **docs
                )
                problems = Problems(hints, category, hints=True)
            else:
                problems = Problems({}, category, hints=True)
            page = application_view(db, actor, application, request, now)
        flags = ("saved", "submitted", "resubmitted", "withdrawn", "trainees_added")
        self.set_header("Cache-Control", "private, no-store")
        self.render_page(
            "apply_application.html",
            **page,
            mode=mode,
            editable=editable,
            parts=form.parts_for(category),
            form=form.Form(docs),
            problems=problems,
            limits=limits_of(self.service),
            status_labels=form.STATUS_LABELS,
            category_labels=form.CATEGORY_LABELS,
            role_labels=form.ROLE_LABELS,
            flags={f for f in flags if self.get_query_argument(f, "")},
            file_parts={path: part for part, path in form.FILE_PARTS.items()},
            new_key=new_key,
            trainees_typed=trainees[0],
            trainees_error=trainees[1],
        )


class ApplicationPage(ApplicationHandler):
    """The form: save a draft (kept as typed, messages as hints), submit (validated, errors at
    the fields); under a supplement request, change the listed fields and resubmit."""

    @web.authenticated
    def get(self, application_id: str):
        self.show(application_id)

    def uploads(self) -> dict[str, closing.Upload]:
        sent = {}
        for path in form.FILE_PARTS.values():
            files = self.request.files.get(path) or []
            if files and files[0]["filename"]:
                sent[path] = closing.Upload(files[0]["filename"], files[0]["body"])
        return sent

    @web.authenticated
    async def post(self, application_id: str):
        action = self.get_body_argument("action", "save")
        limits = limits_of(self.service)
        uploads = self.uploads()
        file_errors = await asyncio.to_thread(
            lambda: {p: m for p, u in uploads.items() if (m := closing.check_file(u, limits))}
        )
        accepted = {p: u for p, u in uploads.items() if p not in file_errors}
        removed = {p for p in form.FILE_PARTS.values() if self.get_body_argument(f"{p}.remove", "")}
        now = utcnow()
        typed: dict = {}
        errors: dict[str, str] = dict(file_errors)
        try:
            with domain_refusals(), StagedFiles(self.store) as staged, self.db() as db:
                actor, application = self.load(db, application_id, lock=True)
                if action in ("submit", "resubmit") and application.status not in (
                    S.DRAFT,
                    S.SUPPLEMENT_REQUESTED,
                ):
                    # a second click after the first went through: show where it stands
                    return self.redirect(self.application_url(application_id), status=303)
                mode, editable = editing(
                    actor, application, latest_supplement(db, application), now
                )
                if mode == "read":
                    raise web.HTTPError(
                        409, "這份申請案目前不能修改 / this application cannot be changed now"
                    )
                stored = apps.documents(application)
                typed, changes = form.documents_from_form(
                    application.category,
                    stored,
                    lambda name: self.get_body_argument(name, None),
                    self.get_body_arguments,
                    editable=editable,
                )
                docs = copy.deepcopy(typed)
                changes |= attach_files(
                    docs, stored, application.id, accepted, removed, editable, staged
                )
                if mode == "draft":
                    apps.save_draft(db, actor, application, now=now, **docs)
                else:  # only what really changed, so that the audit names just that
                    changed = {p: v for p, v in changes.items() if form.value_at(stored, p) != v}
                    apps.supplement(db, actor, application, changed, now=now)
                if action in ("submit", "resubmit") and not file_errors:
                    try:
                        if mode == "draft":
                            apps.submit(db, actor, application, now=now)
                        else:
                            apps.resubmit(db, actor, application, now=now)
                    except apps.ValidationFailed as e:
                        errors |= e.errors
                    except apps.DeadlinePassed as e:
                        errors["application-form"] = str(e)
                typed = docs
        except apps.ApplicationError as e:
            # the company already has an open application in this round: nothing was saved
            errors["company.business_number"] = str(e)
            for path in accepted:
                errors.setdefault(
                    path, "檔案未儲存，請重新選擇 / the file was not saved: choose it again"
                )
        if errors:
            self.set_status(409 if "application-form" in errors else 400)
            return self.show(application_id, typed=typed, errors=errors)
        done = {"submit": "submitted", "resubmit": "resubmitted"}.get(action, "saved")
        self.redirect(self.application_url(application_id, done), status=303)


class WithdrawPage(ApplicationHandler):
    """Withdraw, after a confirmation page (works without JavaScript)."""

    @web.authenticated
    def get(self, application_id: str):
        with self.db() as db:
            _actor, application = self.load(db, application_id)
            view = {
                "id": application.id,
                "company_name": application.company_name,
                "status": application.status,
                "final": S(application.status) in apps.FINAL,
            }
        self.render_page(
            "apply_withdraw.html",
            application=view,
            status_labels=form.STATUS_LABELS,
        )

    @web.authenticated
    def post(self, application_id: str):
        reason = self.get_body_argument("reason", "")
        with domain_refusals(), self.db() as db:
            actor, application = self.load(db, application_id, lock=True)
            if application.status != S.WITHDRAWN:  # a second click: already done
                apps.withdraw(db, actor, application, reason=reason, now=utcnow())
        self.redirect(self.application_url(application_id, "withdrawn"), status=303)


class ApiKeyAction(ApplicationHandler):
    """Inference: replace the company's API key. The new key is on the page that answers
    this POST, once; the database keeps only its hash. The form names the key it replaces,
    so a second click (or a resubmitted form) replaces nothing more."""

    @web.authenticated
    def post(self, application_id: str):
        replaces = self.get_body_argument("replaces", "")
        try:
            with domain_refusals(), self.db() as db:
                actor, application = self.load(db, application_id, lock=True)
                award = db.scalar(select(Award).where(Award.application_id == application.id))
                if award is None:
                    raise web.HTTPError(404, "這份申請案尚未核定 / this application has no award")
                current = awards.active_key(db, award)
                if replaces != (current.prefix if current is not None else ""):
                    raise web.HTTPError(
                        409,
                        "這把金鑰已經更換過了；新金鑰只在更換當下顯示一次，遺失時請再更換一次 / "
                        "this key was already replaced; a new key is shown only once, when it is "
                        "made: replace it again if it was lost",
                    )
                token = awards.regenerate_api_key(db, actor, award, now=utcnow())
        except apps.ApplicationError as e:  # not an inference award
            raise web.HTTPError(409, str(e)) from None
        self.show(application_id, new_key=token)


class TraineesAction(ApplicationHandler):
    """The project's lead or contact (or an operator) adds trainees by e-mail after the award;
    a bad address comes back at the field with what was typed."""

    @web.authenticated
    def post(self, application_id: str):
        typed = self.get_body_argument("trainees", "")
        emails = [line.strip() for line in typed.replace(",", "\n").splitlines() if line.strip()]
        try:
            with domain_refusals(), self.db() as db:
                actor, application = self.load(db, application_id, lock=True)
                award = db.scalar(select(Award).where(Award.application_id == application.id))
                if award is None:
                    raise web.HTTPError(404, "這份申請案尚未核定 / this application has no award")
                awards.add_trainees(db, actor, award, emails, now=utcnow())
        except apps.ApplicationError as e:  # a bad address, or the project has ended
            if e.field != "trainees":
                raise web.HTTPError(409, str(e)) from None
            self.set_status(400)
            return self.show(application_id, trainees=(typed, str(e)))
        self.redirect(self.application_url(application_id, "trainees_added") + "#members")


class ApplicationFile(ApplicationHandler):
    """A supporting file, for the owner, operators and the application's assigned reviewers
    who are not recused (the domain's reading rule)."""

    @web.authenticated
    async def get(self, application_id: str, part: str):
        with self.db() as db:
            try:
                application = apps.get(db, self.account(db), int(application_id))
            except apps.PermissionDenied as e:
                raise web.HTTPError(404, str(e)) from None
            record = form.file_at(apps.documents(application), form.FILE_PARTS[part])
        if record is None:
            raise web.HTTPError(404, "尚未上傳這個檔案 / this file has not been uploaded")
        try:
            body = await asyncio.to_thread(self.store.read, record["key"])
        except FileNotFoundError:
            raise web.HTTPError(404, "找不到檔案 / the file is missing") from None
        self.set_header("Content-Type", record["type"])
        self.set_header("Content-Disposition", attachment(closing.safe_filename(record["name"])))
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "private, no-store")
        self.finish(body)


def routes() -> list[tuple[str, type]]:
    parts = "|".join(form.FILE_PARTS)
    return [
        (r"applications", ApplicationsPage),
        (r"applications/(\d+)", ApplicationPage),
        (r"applications/(\d+)/withdraw", WithdrawPage),
        (r"applications/(\d+)/api-key", ApiKeyAction),
        (r"applications/(\d+)/trainees", TraineesAction),
        (rf"applications/(\d+)/files/({parts})", ApplicationFile),
    ]
