"""Closing obligations: the final report, the slides and a demo video link, due 30 calendar
days after the window ends.

The rule, in Asia/Taipei: the due date is the calendar day of ``window_end`` plus 30 days,
and the report is due by 23:59:59 of that day. A window from 2026-11-28 ends at
2027-02-28 00:00 (its last second of use is 2027-02-27 23:59:59), so the report is due by
2027-03-30 23:59:59 and is overdue from 2027-03-31 00:00:00. Reminders fall due at 00:00 of
the day 14, 7 and 1 days before the due date (2027-03-16, 03-23, 03-29) and ``overdue`` at
00:00 of the day after it.

Files are written to a ``FileStore`` first, then the row in one transaction; a failure
removes the files just written, and the files a submission replaces are removed only after
the row that no longer names them is committed.
"""

from __future__ import annotations

import io
import re
import unicodedata
import uuid
import zipfile
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from . import audit, ledger
from .db import transaction
from .models import ClosingReport, Project
from .storage import FileStore, StagedFiles
from .timewindow import TAIPEI, taipei

DUE_AFTER_DAYS = 30
REMINDER_DAYS = (14, 7, 1)
OVERDUE = "overdue"

FILE_FIELDS = {"final_report": "final_report_path", "slides": "slides_path"}
PART_NAMES = {
    "final_report": ("結案報告", "final report"),
    "slides": ("簡報", "slides"),
    "video_url": ("展示影片連結", "demo video link"),
}
CONTENT_TYPES = {
    "pdf": "application/pdf",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "odp": "application/vnd.oasis.opendocument.presentation",
    "odt": "application/vnd.oasis.opendocument.text",
}


# ---- the due date ---------------------------------------------------------------------------


def due_date(window_end: datetime) -> date:
    return taipei(window_end).date() + timedelta(days=DUE_AFTER_DAYS)


def due_at(window_end: datetime) -> datetime:
    """The last second of the due date, 23:59:59 Asia/Taipei."""
    return datetime.combine(due_date(window_end), time(23, 59, 59), TAIPEI)


def overdue_from(window_end: datetime) -> datetime:
    """00:00:00 Asia/Taipei of the day after the due date."""
    return datetime.combine(due_date(window_end) + timedelta(days=1), time(0), TAIPEI)


def reminder_from(window_end: datetime, key: str) -> datetime:
    """When the reminder ``key`` ("14", "7", "1" or "overdue") falls due."""
    if key == OVERDUE:
        return overdue_from(window_end)
    return datetime.combine(due_date(window_end) - timedelta(days=int(key)), time(0), TAIPEI)


def reminders_due(window_end: datetime, now: datetime) -> list[str]:
    """The reminder keys that have fallen due by ``now`` (every one, so that a run after
    missed runs still decides each), once the window has ended."""
    if now < window_end:
        return []
    keys = [str(d) for d in REMINDER_DAYS] + [OVERDUE]
    return [k for k in keys if now >= reminder_from(window_end, k)]


# ---- state of a project's obligations -----------------------------------------------------


def missing_parts(report: ClosingReport | None) -> list[str]:
    if report is None:
        return list(PART_NAMES)
    have = {
        "final_report": report.final_report_path,
        "slides": report.slides_path,
        "video_url": report.video_url,
    }
    return [part for part in PART_NAMES if not have[part]]


def is_complete(report: ClosingReport | None) -> bool:
    return not missing_parts(report)


@dataclass(frozen=True)
class ClosingState:
    project_id: int
    due_date: date
    due_at: datetime
    window_ended: bool
    complete: bool
    overdue: bool  # past the due date and not complete
    late: bool  # completed after the due date
    missing: list[str]
    submitted_at: datetime | None

    @property
    def missing_names(self) -> list[str]:
        """Each missing part's name, bilingual ("簡報 / slides")."""
        return [f"{PART_NAMES[p][0]} / {PART_NAMES[p][1]}" for p in self.missing]


def state(project: Project, report: ClosingReport | None, now: datetime) -> ClosingState | None:
    """None for a project without a window (an application)."""
    if project.window_end is None:
        return None
    complete = is_complete(report)
    submitted_at = report.submitted_at if report is not None and complete else None
    end = project.window_end
    return ClosingState(
        project_id=project.id,
        due_date=due_date(end),
        due_at=due_at(end),
        window_ended=now >= end,
        complete=complete,
        overdue=not complete and now >= overdue_from(end),
        late=submitted_at is not None and submitted_at >= overdue_from(end),
        missing=missing_parts(report),
        submitted_at=submitted_at,
    )


def report_of(db: Session, project_id: int) -> ClosingReport | None:
    return db.scalar(select(ClosingReport).where(ClosingReport.project_id == project_id))


# ---- checking what was sent ------------------------------------------------------------


MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    types: tuple[str, ...]  # lower-case extensions, e.g. ("pdf", "pptx", "odp", "docx")

    @property
    def max_megabytes(self) -> str:
        """The limit in MB of 1,048,576 bytes, as people read it: "50"."""
        value = Decimal(self.max_bytes) / Decimal(MIB)
        return str(int(value)) if value == value.to_integral() else format(value.normalize(), "f")

    @property
    def types_label(self) -> str:
        return "、".join(t.upper() for t in self.types)

    @property
    def accept(self) -> str:
        return ",".join("." + t for t in self.types)


@dataclass(frozen=True)
class Upload:
    filename: str
    body: bytes


def safe_filename(name: str) -> str:
    """The file's own name, without folders, control or reserved characters, at most 100
    characters before the extension: what the download will be called."""
    name = unicodedata.normalize("NFC", name.replace("\\", "/").rsplit("/", 1)[-1])
    name = "".join(ch for ch in name if ch.isprintable() and ch not in '<>:"/|?*;')
    name = name.strip().lstrip(".").strip()
    path = PurePosixPath(name or "file")
    stem, suffix = path.stem or "file", path.suffix.lower()
    return stem[:100] + suffix


def extension(filename: str) -> str:
    return PurePosixPath(filename).suffix.lower().lstrip(".")


def _zip_has(body: bytes, check) -> bool:
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            return check(archive)
    except (zipfile.BadZipFile, OSError, KeyError, ValueError):
        return False


def _odf(mimetype: str):
    return lambda z: z.read("mimetype").decode("ascii", "replace").strip() == mimetype


SNIFF = {
    "pdf": lambda body: body.startswith(b"%PDF-"),
    "docx": lambda body: _zip_has(body, lambda z: "word/document.xml" in z.namelist()),
    "pptx": lambda body: _zip_has(body, lambda z: "ppt/presentation.xml" in z.namelist()),
    "odp": lambda body: _zip_has(body, _odf(CONTENT_TYPES["odp"])),
    "odt": lambda body: _zip_has(body, _odf(CONTENT_TYPES["odt"])),
}


def check_file(upload: Upload, limits: Limits) -> str | None:
    """A bilingual message when the file cannot be accepted, else None. The extension must
    be allowed and the content must be what the extension says (for the types we know)."""
    kind = extension(upload.filename)
    if kind not in limits.types:
        return (
            f"只接受 {limits.types_label} 檔案 / only "
            f"{', '.join(t.upper() for t in limits.types)} files are accepted"
        )
    if not upload.body:
        return "檔案是空的 / the file is empty"
    if len(upload.body) > limits.max_bytes:
        return (
            f"檔案超過 {limits.max_megabytes} MB 上限 / the file is over the "
            f"{limits.max_megabytes} MB limit"
        )
    sniff = SNIFF.get(kind)
    if sniff is not None and not sniff(upload.body):
        return (
            f"檔案內容不是有效的 {kind.upper()} 檔 / the file's content is not a valid "
            f"{kind.upper()} file"
        )
    return None


URL_MAX = 2000


def check_video_url(text: str) -> str | None:
    if len(text) > URL_MAX:
        return (
            f"連結太長（上限 {URL_MAX} 字元） / the link is too long (at most {URL_MAX} characters)"
        )
    if re.search(r"\s", text):
        return "連結不可包含空白 / the link cannot contain spaces"
    try:
        parts = urlsplit(text)
        host = parts.hostname
    except ValueError:
        parts, host = None, None
    if parts is None or parts.scheme.lower() not in ("http", "https"):
        return (
            "影片連結必須以 http:// 或 https:// 開頭 / the video link must start with "
            "http:// or https://"
        )
    if not host or "." not in host.strip("."):
        return "影片連結缺少有效的網站名稱 / the video link has no valid host name"
    return None


@dataclass
class Submission:
    """What one form post sends; only the parts given change."""

    files: dict[str, Upload] = field(default_factory=dict)  # final_report, slides
    video_url: str = ""

    def check(self, limits: Limits) -> dict[str, str]:
        errors = {}
        for part, upload in self.files.items():
            message = check_file(upload, limits)
            if message:
                errors[part] = message
        if self.video_url:
            message = check_video_url(self.video_url)
            if message:
                errors["video_url"] = message
        if not self.files and not self.video_url and not errors:
            errors["form"] = (
                "請至少選擇一個檔案或填寫影片連結 / choose a file or type the video link"
            )
        return errors


def submit(
    factory: sessionmaker[Session],
    store: FileStore,
    project_id: int,
    submission: Submission,
    *,
    actor: str,
    now: datetime,
) -> ClosingReport:
    """Write the files, then record them in one transaction; all or nothing. Returns the
    report as committed. ``submission`` must have been checked."""
    written: dict[str, str] = {}
    with StagedFiles(store) as staged:
        for part, upload in submission.files.items():
            key = f"closing/{project_id}/{uuid.uuid4().hex}/{safe_filename(upload.filename)}"
            written[part] = staged.save(key, upload.body)
        with transaction(factory) as db:
            project = ledger.lock_project(db, project_id)  # one submission at a time
            report = report_of(db, project.id)
            if report is None:
                report = ClosingReport(project_id=project.id, updated_at=now)
                db.add(report)
            was_complete = is_complete(report)
            for part, key in written.items():
                column = FILE_FIELDS[part]
                if getattr(report, column):
                    staged.replace(getattr(report, column))
                setattr(report, column, key)
            if submission.video_url:
                report.video_url = submission.video_url
            report.updated_at = now
            if is_complete(report) and not was_complete:
                report.submitted_at, report.submitted_by = now, actor
            audit.record(
                db,
                actor=actor,
                action="closing.submit",
                subject_type="project",
                subject_id=project.id,
                at=now,
                files={part: key for part, key in written.items()},
                video_url=submission.video_url or None,
                complete=is_complete(report),
            )
            db.flush()
    return report


def download_name(key: str) -> str:
    return PurePosixPath(key).name


def content_type(key: str) -> str:
    return CONTENT_TYPES.get(extension(key), "application/octet-stream")
