"""Closing obligations: the due-date rule and its edges (Asia/Taipei), the reminders decided
once into the notices outbox, file and link checks, the file store, and submissions that are
all or nothing. Database tests run on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import itertools
import zipfile
from datetime import UTC, date

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import NoResultFound

from quota_service import closing, i18n, ledger, notifications
from quota_service import db as database
from quota_service.closing import Limits, Submission, Upload
from quota_service.models import (
    Account,
    AuditEvent,
    ClosingReport,
    Company,
    Membership,
    Notice,
    Project,
    ProjectStatus,
)
from quota_service.storage import LocalFileStore
from quota_service.timewindow import TAIPEI, window_for_notice
from tests.conftest import at

START, END = window_for_notice(date(2026, 11, 28))  # ends 2027-02-28 00:00 Taipei
_numbers = itertools.count(30_000_000)
PDF = b"%PDF-1.7\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"


def office(kind: str) -> bytes:
    """A minimal but real OOXML / ODF container of the given kind."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        if kind == "odp":
            archive.writestr("mimetype", "application/vnd.oasis.opendocument.presentation")
            archive.writestr("content.xml", "<office:document-content/>")
        else:
            archive.writestr("[Content_Types].xml", "<Types/>")
            member = {"docx": "word/document.xml", "pptx": "ppt/presentation.xml"}[kind]
            archive.writestr(member, "<x/>")
    return buffer.getvalue()


# ---- the due date ----------------------------------------------------------------------


def test_due_30_days_after_the_window_at_23_59_59_taipei():
    assert closing.due_date(END) == date(2027, 3, 30)
    assert closing.due_at(END) == at("2027-03-30 23:59:59")
    assert closing.overdue_from(END) == at("2027-03-31 00:00:00")
    # the window-ending reminder already names the same day
    assert "2027-03-30" in notifications._window_ending(_project(), at("2027-02-14"), [14])[0].body


def _project(**fields) -> Project:
    return Project(id=1, name="p", window_start=START, window_end=END, **fields)


def test_the_due_date_is_counted_on_the_taipei_calendar_not_utc():
    # the window ends 2027-02-28 00:00 Taipei, which is still 2027-02-27 in UTC
    assert END.astimezone(TAIPEI).date() == date(2027, 2, 28)
    assert END.astimezone(UTC).date() == date(2027, 2, 27)
    assert closing.due_date(END.astimezone(UTC)) == date(2027, 3, 30)
    # an end set by hand in the afternoon: the same due day
    assert closing.due_date(at("2027-02-28 15:00:00")) == date(2027, 3, 30)
    # across February: a window ending 2027-01-31 00:00 is due 2027-03-02
    assert closing.due_at(at("2027-01-31 00:00:00")) == at("2027-03-02 23:59:59")
    # and across a year end
    assert closing.due_date(at("2026-12-15 00:00:00")) == date(2027, 1, 14)


def test_overdue_starts_at_midnight_after_the_due_day():
    report = None
    project = _project()
    assert not closing.state(project, report, at("2027-03-30 23:59:59")).overdue
    assert closing.state(project, report, at("2027-03-30 23:59:59.999999")).overdue is False
    assert closing.state(project, report, at("2027-03-31 00:00:00")).overdue
    done = ClosingReport(
        final_report_path="a.pdf",
        slides_path="b.pptx",
        video_url="https://v.example.tw/1",
        submitted_at=at("2027-03-31 00:00:00"),
    )
    state = closing.state(project, done, at("2027-04-02 00:00:00"))
    assert state.complete and not state.overdue and state.late
    done.submitted_at = at("2027-03-30 23:59:59")
    assert not closing.state(project, done, at("2027-04-02 00:00:00")).late
    assert closing.state(Project(id=2, name="app"), None, at("2027-04-02")) is None


def test_reminder_moments_14_7_1_days_before_and_overdue_the_day_after():
    assert [closing.reminder_from(END, k) for k in ("14", "7", "1", "overdue")] == [
        at("2027-03-16 00:00:00"),
        at("2027-03-23 00:00:00"),
        at("2027-03-29 00:00:00"),
        at("2027-03-31 00:00:00"),
    ]
    assert closing.reminders_due(END, at("2027-03-15 23:59:59")) == []
    assert closing.reminders_due(END, at("2027-03-29 00:00:00")) == ["14", "7", "1"]
    assert closing.reminders_due(END, at("2027-03-31 00:00:00")) == ["14", "7", "1", "overdue"]


# ---- reminders in the outbox -------------------------------------------------------------


def make_project(db, *, status=ProjectStatus.APPROVED, end=END, emails=True) -> Project:
    created = at("2026-11-28 09:00:00")
    company = Company(name="結案測試", business_number=str(next(_numbers)), created_at=created)
    project = Project(
        company=company,
        name="結案計畫",
        status=status,
        window_start=START if end else None,
        window_end=end,
        created_at=created,
    )
    db.add(project)
    account = Account(
        username=f"lead{next(_numbers)}",
        email="lead@example.tw" if emails else "",
        created_at=created,
    )
    db.add(Membership(project=project, account=account, role="lead", created_at=created))
    db.flush()
    ledger.grant(db, project, 1_000_000, actor="operator", reason="L1", now=created)
    return project


def report_notices(db, when: str, project: Project):
    created = notifications.plan(db, now=at(when))
    return [(n.key, n.status) for n in created if n.project_id == project.id]


def test_report_reminders_fall_due_once_each_at_taipei_midnight(db):
    project = make_project(db)
    assert report_notices(db, "2027-03-15 23:59:59", project) == []
    assert report_notices(db, "2027-03-16 00:00:00", project) == [("14", "pending")]
    assert report_notices(db, "2027-03-16 00:00:01", project) == []  # decided once
    assert report_notices(db, "2027-03-22 23:59:59", project) == []
    assert report_notices(db, "2027-03-23 00:00:00", project) == [("7", "pending")]
    assert report_notices(db, "2027-03-29 00:00:00", project) == [("1", "pending")]
    assert report_notices(db, "2027-03-30 23:59:59", project) == []
    assert report_notices(db, "2027-03-31 00:00:00", project) == [("overdue", "pending")]
    assert report_notices(db, "2027-05-01 00:00:00", project) == []
    notices = db.scalars(select(Notice).where(Notice.project_id == project.id)).all()
    assert {n.kind for n in notices} == {"report-due"}
    overdue = next(n for n in notices if n.key == "overdue")
    assert "2027-03-30 23:59:59" in overdue.body and "結案報告、簡報、展示影片連結" in overdue.body
    assert overdue.recipients == "lead@example.tw"
    assert "逾期" in overdue.subject and "overdue" in overdue.subject


def test_a_run_after_missed_runs_decides_every_report_reminder(db):
    project = make_project(db, status=ProjectStatus.CLOSED)  # closed at the end: still owes
    assert report_notices(db, "2027-04-02 12:00:00", project) == [
        ("14", "pending"),
        ("7", "pending"),
        ("1", "pending"),
        ("overdue", "pending"),
    ]
    assert report_notices(db, "2027-04-02 12:00:01", project) == []


def test_no_report_reminder_inside_the_window_for_a_complete_report_or_an_application(db):
    project = make_project(db)
    inside = make_project(db, end=at("2027-06-01 00:00:00"))
    application = make_project(db, status=ProjectStatus.PENDING, end=None)
    rejected = make_project(db, status=ProjectStatus.REJECTED)
    db.add(
        ClosingReport(
            project_id=project.id,
            final_report_path="closing/x/r.pdf",
            slides_path="closing/x/s.pptx",
            video_url="https://v.example.tw/1",
            updated_at=at("2027-03-01 10:00:00"),
        )
    )
    db.flush()
    created = notifications.plan(db, now=at("2027-04-02 12:00:00"))
    owners = {n.project_id for n in created if n.kind == "report-due"}
    assert owners.isdisjoint({project.id, inside.id, application.id, rejected.id})


def test_a_partial_report_is_reminded_of_what_is_missing(db):
    project = make_project(db)
    db.add(
        ClosingReport(
            project_id=project.id,
            final_report_path="closing/x/r.pdf",
            updated_at=at("2027-03-01 10:00:00"),
        )
    )
    db.flush()
    notifications.plan(db, now=at("2027-03-16 08:00:00"))
    notice = db.scalar(select(Notice).where(Notice.project_id == project.id))
    assert notice.key == "14"
    assert (
        "尚缺：簡報、展示影片連結" in notice.body
        and "missing: slides, demo video link" in notice.body
    )


# ---- checks on what is sent ---------------------------------------------------------------

LIMITS = Limits(max_bytes=1024, types=("pdf", "pptx", "odp", "docx"))


@pytest.mark.parametrize(
    "name, body",
    [
        ("final.pdf", PDF),
        ("結案報告.DOCX", office("docx")),
        ("slides.pptx", office("pptx")),
        ("slides.odp", office("odp")),
    ],
)
def test_accepted_files(name, body):
    assert closing.check_file(Upload(name, body), LIMITS) is None


@pytest.mark.parametrize(
    "name, body, message",
    [
        ("report.exe", PDF, "only PDF, PPTX, ODP, DOCX files are accepted"),
        ("report", PDF, "only PDF"),
        ("report.pdf", b"", "the file is empty"),
        ("report.pdf", b"%PDF-" + b"x" * 1020, "over the 0.0009765625 MB limit"),
        ("report.pdf", b"hello, not a pdf", "not a valid PDF file"),
        ("slides.pptx", office("docx"), "not a valid PPTX file"),
        ("slides.pptx", b"PK\x03\x04broken", "not a valid PPTX file"),
        ("slides.odp", office("pptx"), "not a valid ODP file"),
    ],
)
def test_refused_files_say_why_in_both_languages(name, body, message):
    refusal = closing.check_file(Upload(name, body), LIMITS)
    assert refusal is not None and message in refusal
    assert refusal.split(" / ")[0] != refusal  # Chinese first, then English


def test_the_size_limit_is_inclusive():
    assert closing.check_file(Upload("r.pdf", b"%PDF-" + b"x" * 1019), LIMITS) is None
    assert closing.check_file(Upload("r.pdf", b"%PDF-" + b"x" * 1020), LIMITS) is not None
    assert Limits(50 * 1024 * 1024, ("pdf",)).max_megabytes == "50"


@pytest.mark.parametrize(
    "url, ok",
    [
        ("https://www.youtube.com/watch?v=abc123", True),
        ("http://video.example.tw/demo.mp4", True),
        ("HTTPS://YOUTU.BE/abc", True),
        ("ftp://example.com/demo.mp4", False),
        ("javascript:alert(1)", False),
        ("https://", False),
        ("https://localhost/x", False),
        ("https://exa mple.com/x", False),
        ("www.youtube.com/watch?v=abc", False),
        ("https://[::1/x", False),
        ("https://v.example.tw/" + "a" * 2000, False),
    ],
)
def test_video_links_must_be_http_or_https_to_a_named_host(url, ok):
    assert (closing.check_video_url(url) is None) is ok


def test_every_link_refusal_shows_one_language_on_a_page():
    translators = i18n.read_catalogues()
    too_long = closing.check_video_url("https://v.example.tw/" + "a" * 2000)
    assert translators["zh_TW"].bilingual(too_long) == "連結太長（上限 2000 字元）"
    assert translators["en"].bilingual(too_long) == "the link is too long (at most 2000 characters)"
    english = {
        "ftp://example.com/demo.mp4": "the video link must start with http:// or https://",
        "https://exa mple.com/x": "the link cannot contain spaces",
        "https://localhost/x": "the video link has no valid host name",
    }
    for url, message in english.items():
        assert translators["en"].bilingual(closing.check_video_url(url)) == message


def test_an_empty_submission_is_refused_as_a_whole():
    assert Submission().check(LIMITS) == {
        "form": "請至少選擇一個檔案或填寫影片連結 / choose a file or type the video link"
    }
    errors = Submission(
        files={"final_report": Upload("r.pdf", b"nope")}, video_url="ftp://x.tw/v"
    ).check(LIMITS)
    assert set(errors) == {"final_report", "video_url"}


@pytest.mark.parametrize(
    "typed, kept",
    [
        ("../../etc/passwd.pdf", "passwd.pdf"),
        ("C:\\Users\\me\\結案報告.PDF", "結案報告.pdf"),
        (".hidden.pdf", "hidden.pdf"),
        ('a"b<c>.pdf', "abc.pdf"),
        ("x" * 300 + ".pdf", "x" * 100 + ".pdf"),
        ("", "file"),
    ],
)
def test_safe_file_names(typed, kept):
    assert closing.safe_filename(typed) == kept


# ---- the file store ------------------------------------------------------------------------


def test_local_file_store_round_trip_and_refuses_keys_outside_its_root(tmp_path):
    store = LocalFileStore(tmp_path / "files")
    store.save("closing/1/abc/r.pdf", PDF)
    assert store.read("closing/1/abc/r.pdf") == PDF and store.exists("closing/1/abc/r.pdf")
    assert not list((tmp_path / "files" / "closing/1/abc").glob(".partial-*"))
    store.delete("closing/1/abc/r.pdf")
    assert not store.exists("closing/1/abc/r.pdf")
    assert (tmp_path / "files").is_dir() and not (tmp_path / "files" / "closing").exists()
    store.delete("closing/1/abc/r.pdf")  # already gone: nothing happens
    for key in ("../x.pdf", "/etc/passwd", "a/../../b", "", "a//b", "./a", "a\\..\\b"):
        with pytest.raises(ValueError):
            store.save(key, b"x")
    assert not (tmp_path / "x.pdf").exists()


def test_a_failed_write_leaves_neither_a_partial_file_nor_the_old_one_changed(tmp_path):
    store = LocalFileStore(tmp_path)
    store.save("k/r.pdf", b"old")

    with pytest.raises(TypeError):
        store.save("k/r.pdf", object())  # not bytes: the write fails
    assert store.read("k/r.pdf") == b"old"
    assert [p.name for p in (tmp_path / "k").iterdir()] == ["r.pdf"]


# ---- submissions: files first, then the row; all or nothing -----------------------------


def test_submit_writes_files_then_the_row_and_completes_once(session_factory, tmp_path):
    with database.transaction(session_factory) as setup:
        project = make_project(setup)
        lead = project.memberships[0].account.username
    store = LocalFileStore(tmp_path)
    first = closing.submit(
        session_factory,
        store,
        project.id,
        Submission(files={"final_report": Upload("結案報告.pdf", PDF)}),
        actor=lead,
        now=at("2027-03-10 10:00:00"),
    )
    assert first.final_report_path.startswith(f"closing/{project.id}/")
    assert first.final_report_path.endswith("/結案報告.pdf")
    assert store.read(first.final_report_path) == PDF
    assert first.submitted_at is None  # not complete yet
    old_report = first.final_report_path
    done = closing.submit(
        session_factory,
        store,
        project.id,
        Submission(
            files={
                "final_report": Upload("v2.pdf", PDF + b"%v2"),
                "slides": Upload("s.pptx", office("pptx")),
            },
            video_url="https://www.youtube.com/watch?v=abc123",
        ),
        actor=lead,
        now=at("2027-03-11 10:00:00"),
    )
    assert done.submitted_at == at("2027-03-11 10:00:00") and done.submitted_by == lead
    assert not store.exists(old_report)  # replaced, then removed after the commit
    assert store.read(done.final_report_path) == PDF + b"%v2"
    # a later replacement keeps the moment the report became complete
    again = closing.submit(
        session_factory,
        store,
        project.id,
        Submission(video_url="https://vimeo.com/1"),
        actor="operator",
        now=at("2027-03-12 10:00:00"),
    )
    assert (
        again.submitted_at == at("2027-03-11 10:00:00") and again.video_url == "https://vimeo.com/1"
    )
    with session_factory() as check:
        assert check.scalar(select(func.count()).select_from(ClosingReport)) == 1
        actions = check.scalars(
            select(AuditEvent.action).where(AuditEvent.action == "closing.submit")
        ).all()
        assert len(actions) == 3


class RecordingStore(LocalFileStore):
    def __init__(self, root):
        super().__init__(root)
        self.saved: list[str] = []

    def save(self, key, data):
        super().save(key, data)
        self.saved.append(key)


def test_a_failed_transaction_removes_the_files_just_written(session_factory, tmp_path):
    store = RecordingStore(tmp_path / "files")
    with pytest.raises(NoResultFound):  # no such project: the row cannot be written
        closing.submit(
            session_factory,
            store,
            999_999,
            Submission(files={"final_report": Upload("r.pdf", PDF)}),
            actor="x",
            now=at("2027-03-10 10:00:00"),
        )
    assert len(store.saved) == 1  # the file was written first ...
    assert [p for p in (tmp_path / "files").rglob("*") if p.is_file()] == []  # ... then removed
    with session_factory() as check:
        assert check.scalar(select(func.count()).select_from(ClosingReport)) == 0
