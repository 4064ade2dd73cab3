"""Pages around a project's usage and its closing obligations, and the operator's
points adjustment. Thin: the arithmetic is in ``usage``, the rules in ``closing``, the
queries in ``reports``."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

from tornado import web

from . import access, closing, ledger, model_scans, reports, usage
from .handlers import REASON_REQUIRED, AdminPage, BaseHandler, parse_points
from .models import LedgerKind, Project
from .storage import LocalFileStore
from .timewindow import taipei, utcnow

FILE_PARTS = {"final-report": "final_report", "slides": "slides"}


def limits_of(service) -> closing.Limits:
    return closing.Limits(
        max_bytes=service.closing_max_file_mb * closing.MIB,
        types=tuple(t.lower().lstrip(".") for t in service.closing_file_types),
    )


def attachment(filename: str) -> str:
    """A Content-Disposition value that keeps a Chinese file name (RFC 6266 / 5987)."""
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


class ProjectMixin:
    """Finds the project in the URL; members, and operators when allowed, get it."""

    def project_for(self: BaseHandler, db, project_id: str, *, operators: bool = True) -> Project:
        project = db.get(Project, int(project_id))
        if project is None:
            raise web.HTTPError(404, "沒有這個計畫 / no such project")
        if operators and self.is_operator:
            return project
        if not access.is_member(db, project.id, self.username):
            raise web.HTTPError(403, "你不是這個計畫的成員 / you are not a member of this project")
        return project


class UsageCSV(ProjectMixin, BaseHandler):
    """The project's usage as a spreadsheet: one row per session and per usage charge."""

    @web.authenticated
    async def get(self, project_id: str):
        now = utcnow()
        name = f"aipower-project-{int(project_id)}-usage-{taipei(now):%Y%m%d-%H%M}.csv"
        with self.db() as db:
            project = self.project_for(db, project_id)
            self.set_header("Content-Type", "text/csv; charset=utf-8")
            self.set_header("Content-Disposition", attachment(name))
            self.set_header("Cache-Control", "private, no-store")
            for chunk in usage.csv_chunks(reports.usage_csv_rows(db, project.id, now)):
                self.write(chunk)
                await self.flush()
        self.finish()


class ClosingPage(ProjectMixin, BaseHandler):
    """Final report, slides and demo video link: members upload, operators look."""

    def show(self, project_id: str, *, errors=None, typed=None, chosen=(), submitted=False):
        now = utcnow()
        with self.db() as db:
            project = self.project_for(db, project_id)
            summary = reports.project_summary(db, project)
            view = reports.closing_view(db, project, now)
            member = access.is_member(db, project.id, self.username)
        self.render_page(
            "closing.html",
            project=summary,
            closing=view,
            may_submit=member,
            limits=limits_of(self.service),
            errors=errors or {},
            typed=typed or {},
            chosen=list(chosen),
            submitted=submitted,
        )

    @web.authenticated
    def get(self, project_id: str):
        self.show(project_id, submitted=self.get_query_argument("submitted", "") == "1")

    @web.authenticated
    async def post(self, project_id: str):
        with self.db() as db:
            project = self.project_for(db, project_id, operators=False)
            if project.window_end is None:
                raise web.HTTPError(
                    409, "這個計畫還沒有使用期間 / this project has no usage window yet"
                )
        files = {}
        for part in closing.FILE_FIELDS:
            sent = self.request.files.get(part) or []
            if sent and sent[0]["filename"]:
                files[part] = closing.Upload(sent[0]["filename"], sent[0]["body"])
        submission = closing.Submission(
            files=files, video_url=self.get_body_argument("video_url", "").strip()
        )
        errors = await asyncio.to_thread(submission.check, limits_of(self.service))
        if errors:
            self.set_status(400)
            return self.show(
                project_id,
                errors=errors,
                typed={"video_url": submission.video_url},
                chosen=files,
            )
        await asyncio.to_thread(
            closing.submit,
            self.service.session_factory,
            LocalFileStore(self.service.files_dir),
            project.id,
            submission,
            actor=self.username,
            now=utcnow(),
        )
        self.redirect(f"{self.service.service_prefix}projects/{project.id}/closing?submitted=1")


class ClosingFile(ProjectMixin, BaseHandler):
    """Download a submitted file (members and operators)."""

    @web.authenticated
    async def get(self, project_id: str, part: str):
        with self.db() as db:
            project = self.project_for(db, project_id)
            report = closing.report_of(db, project.id)
            key = getattr(report, closing.FILE_FIELDS[FILE_PARTS[part]]) if report else ""
        if not key:
            raise web.HTTPError(404, "尚未上傳這個檔案 / this file has not been uploaded")
        try:
            body = await asyncio.to_thread(LocalFileStore(self.service.files_dir).read, key)
        except FileNotFoundError:
            raise web.HTTPError(404, "找不到檔案 / the file is missing") from None
        self.set_header("Content-Type", closing.content_type(key))
        self.set_header("Content-Disposition", attachment(closing.download_name(key)))
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "private, no-store")
        self.finish(body)


class AdminAdjust(AdminPage):
    """Add or remove points with a reason, written to the ledger as an adjustment and
    audited; a removal runs a metering pass at once, so servers stop if it must."""

    @web.authenticated
    async def post(self, project_id: str):
        self.require_operator()
        points = self.get_body_argument("points", "").strip()
        reason = self.get_body_argument("reason", "").strip()
        typed = {
            "project_id": int(project_id),
            "form": "adjust",
            "points": points,
            "reason": reason,
        }
        errors = {}
        millipoints, message = parse_points(points)
        if not message and millipoints == 0:
            message = "調整點數不可為 0 / an adjustment cannot be zero"
        if message:
            errors["points"] = message
        if not reason:
            errors["reason"] = REASON_REQUIRED
        if not errors:
            with self.db() as db:
                if db.get(Project, int(project_id)) is None:
                    raise web.HTTPError(404, "沒有這個計畫 / no such project")
                project = ledger.lock_project(db, int(project_id))
                ledger.grant(
                    db,
                    project,
                    millipoints,
                    actor=self.username,
                    reason=reason,
                    now=utcnow(),
                    kind=LedgerKind.ADJUSTMENT,
                )
        if errors:
            self.set_status(400)
            return self.get(errors=errors, typed=typed)
        if millipoints < 0:
            await self.service.meter_once()
        self.redirect(f"{self.service.service_prefix}admin#project-{int(project_id)}")


class AdminModelScans(AdminPage):
    """The latest scan of each member's storage for banned models, findings first."""

    @web.authenticated
    def get(self):
        self.require_operator()
        with self.db() as db:
            scans = model_scans.latest_scans(db)
        self.render_page("admin_model_scans.html", scans=scans)


def routes() -> list[tuple[str, type]]:
    return [
        (r"admin/model-scans", AdminModelScans),
        (r"projects/(\d+)/usage\.csv", UsageCSV),
        (r"projects/(\d+)/closing", ClosingPage),
        (r"projects/(\d+)/closing/(final-report|slides)", ClosingFile),
        (r"admin/projects/(\d+)/adjust", AdminAdjust),
    ]
