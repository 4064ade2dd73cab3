"""The violations register's pages and JSON API. Thin: the rules are in ``violations`` and
``sanctions``; the pages (cookie and XSRF) and the API (token) run the same actions.

Who may do what: operators (the ``custom:aipower:admin`` scope) read every violation and do
everything; a member of a project reads the violations of that project (internal notes left
out) and files the appeal; anyone else gets 404, so that ids disclose nothing.
"""

from __future__ import annotations

import asyncio
import functools
import json

from tornado import web

from . import db as database
from . import reports, sanctions, violations
from .handlers import APIHandler, BaseHandler
from .models import ProjectStatus, SanctionKind, Violation, ViolationKind
from .timewindow import utcnow
from .violations import RegisterError

STOPS_SERVERS = (SanctionKind.SUSPEND, SanctionKind.TERMINATE)
REASONS = {400: "invalid", 403: "not-allowed", 404: "not-found", 409: "conflict"}


def _int(value: object, field: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise RegisterError("請填寫數字", "a number is expected", field=field) from None


def _ints(values: list, field: str) -> list[int]:
    return [_int(v, field) for v in values]


class RegisterActions:
    """The register's actions, each one unit of work; refusals raise ``RegisterError``."""

    def require_operator_scope(self: BaseHandler) -> None:
        if not self.is_operator:
            raise violations.NotAllowed("只有營運單位可以執行", "only operators may do this")

    def readable(self: BaseHandler, db, violation_id: int) -> Violation:
        violation = db.get(Violation, violation_id)
        if violation is None or not violations.may_read(
            db, violation, self.username, operator=self.is_operator
        ):
            raise violations.NotFound("沒有這筆違規紀錄", "no such violation")
        return violation

    def violation_view(self, violation_id: int) -> dict:
        with self.db() as db:
            violation = self.readable(db, violation_id)
            return violations.view(db, violation, operator=self.is_operator)

    def record_violation(self, **fields) -> int:
        self.require_operator_scope()
        with self.db() as db:
            violation = violations.record_by_operator(db, self.account(db), now=utcnow(), **fields)
            return violation.id

    def appeal(self, violation_id: int, *, text: str) -> None:
        with self.db() as db:
            violation = self.readable(db, violation_id)
            violations.appeal(db, violation, self.account(db), text=text, now=utcnow())

    def note(self, violation_id: int, *, text: str, internal: bool) -> None:
        self.require_operator_scope()
        with self.db() as db:
            violation = self.readable(db, violation_id)
            violations.add_note(
                db, violation, self.account(db), text=text, internal=internal, now=utcnow()
            )

    def decide(self, violation_id: int, *, decision: str, reason: str) -> None:
        self.require_operator_scope()
        with self.db() as db:
            violation = self.readable(db, violation_id)
            violations.decide(db, violation, self.account(db), decision, reason=reason, now=utcnow())  # fmt: skip

    async def impose(
        self, violation_id: int, *, kind: str, reason: str, urgent_reason: str = ""
    ) -> int:
        """Impose a sanction; a suspension or termination stops the project's servers now
        rather than at the next metering pass."""
        self.require_operator_scope()
        with self.db() as db:
            violation = self.readable(db, violation_id)
            sanction = sanctions.impose(
                db, violation, kind, self.account(db), reason=reason,
                urgent_reason=urgent_reason, now=utcnow(),
            )  # fmt: skip
            stops, sanction_id = sanction.kind in STOPS_SERVERS, sanction.id
        if stops:
            await self.service.meter_once()
        return sanction_id

    def lift(self, sanction_id: int, *, reason: str) -> int:
        self.require_operator_scope()
        with self.db() as db:
            sanction = sanctions.get(db, sanction_id)
            sanctions.lift(db, sanction, self.account(db), reason=reason, now=utcnow())
            return sanction.violation_id

    async def confirm_purge(self, sanction_id: int, *, reason: str) -> int:
        """The second step of a termination; the files are deleted in a worker thread."""
        self.require_operator_scope()
        purger = self.service.storage_purger()

        def purge() -> int:
            with database.transaction(self.service.session_factory) as db:
                sanction = sanctions.get(db, sanction_id)
                sanctions.confirm_purge(
                    db, sanction, self.account(db), purger, reason=reason, now=utcnow()
                )
                return sanction.violation_id

        return await asyncio.to_thread(purge)


# ---- JSON API ---------------------------------------------------------------------------------


def answers_refusals(method):
    """A refusal of the register as JSON with its status: 400 with ``errors`` at the field,
    403, 404 or 409; never a traceback."""

    @functools.wraps(method)
    async def answered(self: APIHandler, *args):
        try:
            result = method(self, *args)
            if asyncio.iscoroutine(result):
                await result
        except RegisterError as e:
            body = {"status": e.status_code, "reason": REASONS[e.status_code], "message": str(e)}
            if e.field:
                body["errors"] = {e.field: str(e)}
            self.write_json(body, e.status_code)

    return answered


class ViolationsAPI(RegisterActions, APIHandler):
    @answers_refusals
    def get(self):
        with self.db() as db:
            found = violations.readable(db, self.username, operator=self.is_operator)
            self.write_json([violations.view(db, v, operator=self.is_operator, full=False) for v in found])  # fmt: skip

    @answers_refusals
    def post(self):
        body = self.read_json()
        cited = [s for s in (violations.REFUSALS, violations.SCANS) if s in body]
        if "application_id" in body:
            cited.append(violations.APPLICATION)
        if len(cited) > 1:
            raise RegisterError("證據來源只能一種", "cite one source of evidence", field="source")
        source = cited[0] if cited else violations.MANUAL
        evidence = body.get("evidence") or {}
        if not isinstance(evidence, dict):
            raise RegisterError("證據必須是 JSON 物件", "evidence is an object", field="evidence")
        records = body.get(source, []) if source in (violations.REFUSALS, violations.SCANS) else []
        if not isinstance(records, list):
            raise RegisterError("請列出紀錄編號", "a list of record ids is expected", field=source)
        project_id, application_id = body.get("project_id"), body.get("application_id")
        violation_id = self.record_violation(
            source=source,
            summary=str(body.get("summary") or ""),
            project_id=None if project_id is None else _int(project_id, "project_id"),
            kind=str(body.get("kind") or ""),
            evidence=evidence,
            cited=_ints(records, source),
            application_id=None
            if application_id is None
            else _int(application_id, "application_id"),
        )
        self.write_json(self.violation_view(violation_id), 201)


class ViolationAPI(RegisterActions, APIHandler):
    @answers_refusals
    def get(self, violation_id: str):
        self.write_json(self.violation_view(int(violation_id)))


class ViolationActionAPI(RegisterActions, APIHandler):
    """appeal {text}; notes {text, internal}; decision {decision, reason};
    sanctions {kind, reason, urgent_reason}."""

    @answers_refusals
    async def post(self, violation_id: str, action: str):
        body, vid = self.read_json(), int(violation_id)
        text = str(body.get("text") or "")
        reason = str(body.get("reason") or "")
        if action == "appeal":
            self.appeal(vid, text=text)
        elif action == "notes":
            self.note(vid, text=text, internal=body.get("internal") is True)
        elif action == "decision":
            self.decide(vid, decision=str(body.get("decision") or ""), reason=reason)
        else:
            await self.impose(
                vid, kind=str(body.get("kind") or ""), reason=reason,
                urgent_reason=str(body.get("urgent_reason") or ""),
            )  # fmt: skip
        self.write_json(self.violation_view(vid), 201 if action != "decision" else 200)


class SanctionActionAPI(RegisterActions, APIHandler):
    """lift {reason}; purge {reason}: confirm a termination's purge."""

    @answers_refusals
    async def post(self, sanction_id: str, action: str):
        reason = str(self.read_json().get("reason") or "")
        if action == "lift":
            violation_id = self.lift(int(sanction_id), reason=reason)
        else:
            violation_id = await self.confirm_purge(int(sanction_id), reason=reason)
        self.write_json(self.violation_view(violation_id))


class EvidenceAPI(RegisterActions, APIHandler):
    """What may be cited: refused connections and storage scans with findings (operators)."""

    @answers_refusals
    def get(self):
        self.require_operator_scope()
        with self.db() as db:
            self.write_json(
                {
                    violations.REFUSALS: violations.recorded_refusals(db),
                    violations.SCANS: violations.flagged_scans(db),
                }
            )


# ---- pages ----------------------------------------------------------------------------------


def _pair(pair: tuple[str, str]) -> str:
    return f"{pair[0]} / {pair[1]}"


KIND_CHOICES = [(k.value, _pair(violations.KIND_NAMES[k])) for k in ViolationKind]
SANCTION_CHOICES = [(k.value, _pair(violations.SANCTION_NAMES[k])) for k in SanctionKind]


class RegisterPage(RegisterActions, BaseHandler):
    def refused(self, e: RegisterError, show, **typed):
        """A refusal shown at its form and field, keeping what was typed; 403 and 404 as
        error pages."""
        if e.status_code in (403, 404):
            raise web.HTTPError(e.status_code, str(e))
        self.set_status(e.status_code)
        return show(errors={e.field or "form": str(e)}, typed=typed)

    def show_violation(
        self, violation_id: int, *, errors: dict | None = None, typed: dict | None = None
    ):
        try:
            view = self.violation_view(violation_id)
        except RegisterError as e:
            raise web.HTTPError(e.status_code, str(e)) from None
        self.render_page(
            "violation.html",
            v=view,
            evidence_text=json.dumps(view["evidence"], ensure_ascii=False, indent=2),
            sanction_kinds=SANCTION_CHOICES,
            serious_at=violations.SERIOUS_AT,
            errors=errors or {},
            typed=typed or {},
        )


class ViolationsPage(RegisterPage):
    """The register: every violation for operators, with the forms that record one from
    recorded evidence or a description; a member's own violations otherwise."""

    def show(self, *, errors: dict | None = None, typed: dict | None = None):
        with self.db() as db:
            found = violations.readable(db, self.username, operator=self.is_operator)
            listed = [violations.view(db, v, operator=self.is_operator, full=False) for v in found]
            refusals = scans = projects = []
            if self.is_operator:
                refusals = violations.recorded_refusals(db)
                scans = violations.flagged_scans(db)
                projects = [
                    p
                    for p in reports.all_projects(db)
                    if p.status not in (ProjectStatus.PENDING, ProjectStatus.REJECTED)
                ]
        self.render_page(
            "violations.html",
            violations=listed,
            refusals=refusals,
            scans=scans,
            projects=projects,
            kinds=KIND_CHOICES,
            errors=errors or {},
            typed=typed or {},
        )

    @web.authenticated
    def get(self):
        self.show()

    @web.authenticated
    def post(self):
        arg = self.get_body_argument
        source = arg("source", violations.MANUAL)
        typed = {
            "source": source,
            "project_id": arg("project_id", ""),
            "kind": arg("kind", ""),
            "summary": arg("summary", ""),
            "description": arg("description", ""),
            "application_id": arg("application_id", ""),
            "cited": self.get_body_arguments(source),
        }
        description = typed["description"].strip()
        try:
            violation_id = self.record_violation(
                source=source,
                summary=typed["summary"],
                project_id=_int(typed["project_id"], "project_id")
                if typed["project_id"]
                else None,  # fmt: skip
                kind=typed["kind"],
                evidence={"description": description} if description else {},
                cited=_ints(typed["cited"], source),
                application_id=_int(typed["application_id"], "application_id")
                if source == violations.APPLICATION
                else None,
            )
        except RegisterError as e:
            return self.refused(e, self.show, **typed)
        self.redirect(f"{self.service.service_prefix}violations/{violation_id}")


class ViolationPage(RegisterPage):
    """One violation: its evidence, history and sanctions, and the forms its readers may use
    (the appeal for the project's members; notes, the decision and sanctions for operators)."""

    @web.authenticated
    def get(self, violation_id: str):
        self.show_violation(int(violation_id))


class ViolationActionPage(RegisterPage):
    @web.authenticated
    async def post(self, violation_id: str, action: str):
        vid, arg = int(violation_id), self.get_body_argument
        typed = {
            "form": action,
            "text": arg("text", ""),
            "internal": arg("internal", "") == "1",
            "decision": arg("decision", ""),
            "reason": arg("reason", ""),
            "kind": arg("kind", ""),
            "urgent_reason": arg("urgent_reason", ""),
        }
        try:
            if action == "appeal":
                self.appeal(vid, text=typed["text"])
            elif action == "note":
                self.note(vid, text=typed["text"], internal=typed["internal"])
            elif action == "decision":
                self.decide(vid, decision=typed["decision"], reason=typed["reason"])
            else:
                await self.impose(
                    vid, kind=typed["kind"], reason=typed["reason"],
                    urgent_reason=typed["urgent_reason"],
                )  # fmt: skip
        except RegisterError as e:
            return self.refused(e, functools.partial(self.show_violation, vid), **typed)
        self.redirect(f"{self.service.service_prefix}violations/{vid}#{action}")


class SanctionActionPage(RegisterPage):
    """Lift a sanction, or confirm a termination's purge; back to the violation's page."""

    @web.authenticated
    async def post(self, sanction_id: str, action: str):
        reason = self.get_body_argument("reason", "")
        try:
            self.require_operator_scope()
            with self.db() as db:
                violation_id = sanctions.get(db, int(sanction_id)).violation_id
        except RegisterError as e:
            raise web.HTTPError(e.status_code, str(e)) from None
        try:
            if action == "lift":
                self.lift(int(sanction_id), reason=reason)
            else:
                await self.confirm_purge(int(sanction_id), reason=reason)
        except RegisterError as e:
            show = functools.partial(self.show_violation, violation_id)
            return self.refused(e, show, form=f"{action}-{sanction_id}", reason=reason)
        self.redirect(f"{self.service.service_prefix}violations/{violation_id}#sanctions")


def routes() -> list[tuple[str, type]]:
    return [
        (r"violations", ViolationsPage),
        (r"violations/(\d+)", ViolationPage),
        (r"violations/(\d+)/(appeal|note|decision|sanction)", ViolationActionPage),
        (r"sanctions/(\d+)/(lift|purge)", SanctionActionPage),
        (r"api/v1/violations", ViolationsAPI),
        (r"api/v1/violations/evidence", EvidenceAPI),
        (r"api/v1/violations/(\d+)", ViolationAPI),
        (r"api/v1/violations/(\d+)/(appeal|notes|decision|sanctions)", ViolationActionAPI),
        (r"api/v1/sanctions/(\d+)/(lift|purge)", SanctionActionAPI),
    ]
