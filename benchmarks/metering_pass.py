"""One metering pass at 100, 1,000 and 10,000 running servers, against a naive ORM loop.

Not a test: a measurement. For each size N:

- a fresh PostgreSQL database (a throw-away server started by this script, migrated with
  ``quota_service.db.upgrade``) holding N open usage sessions, opened at T0, spread over N/4
  approved projects (window open, four members each, a large grant); the rows are inserted
  in bulk, and that setup is not timed;
- an identical copy of it (``CREATE DATABASE ... TEMPLATE``) for the reference pass;
- a small tornado server in its own process that imitates JupyterHub's paginated
  ``GET /hub/api/users?state=active`` (``Accept: application/jupyterhub-pagination+json``,
  at most 200 users a page, JupyterHub's default ``api_page_max_limit``), listing the N
  servers. Its pages are rendered once and then served from memory, so that the fetch time
  is the client's (HTTP, JSON decoding, ``running_server``), not the imitation's.

Then passes at T0+61 s, T0+122 s, T0+183 s, ... (5 by default), each charging one period
per session; the figures are medians over the passes. A pass is what
``QuotaService.meter_once`` does: (a) the hub list through the real
``HubAPI.running_servers()``, then (b) ``metering.meter()`` in one ``database.transaction``
(commit included), then (c) ``metering.adopt_unmetered()`` in a transaction of its own
(here it finds every listed server metered, so it adopts nothing). The reference pass does
the same work the naive way, on its own copy of the data, alternating with ours: instead of
(b), one ORM query for the open sessions, then per project ``ledger.lock_project``, per
session ``metering.settle`` and ``access.is_member``, and ``ledger.balance`` per project;
(a) and (c) are the same calls as ours. Database calls are counted with a
``before_cursor_execute`` listener during (b) and (c); an ``executemany`` (one statement,
many parameter sets) counts as one call. BEGIN and COMMIT are not cursor calls and are not
counted.

At the end both copies must hold the same ledger and the same session state.

    .venv/bin/python benchmarks/metering_pass.py
    .venv/bin/python benchmarks/metering_pass.py --sizes 10000 --no-reference --profile
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import itertools
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from sqlalchemy import event, func, insert, select, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from quota_service import access, ledger, metering  # noqa: E402
from quota_service import db as database  # noqa: E402
from quota_service.hub_api import HubAPI  # noqa: E402
from quota_service.models import (  # noqa: E402
    Account,
    Company,
    LedgerEntry,
    LedgerKind,
    Membership,
    Project,
    ProjectStatus,
    UsageSession,
)
from quota_service.timewindow import window_for_notice  # noqa: E402

CREATED = datetime(2026, 11, 20, 1, 0, tzinfo=UTC)
WINDOW_START, WINDOW_END = window_for_notice(date(2026, 11, 28))
T0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)  # 10:00 in Taipei, inside the window
INTERVAL = 60
MEMBERS_PER_PROJECT = 4
GRANT = 10**12  # millipoints: never short
HUB_MAX_PAGE = 200  # JupyterHub's default api_page_max_limit
TOKEN = "benchmark-token"


# ---- the hub's server list, in its own process -------------------------------------------


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def username(i: int) -> str:
    return f"user{i:05d}"


def gpu_of(i: int) -> tuple[str, int]:
    return ("nvidia", "amd")[i % 2], 1 + (i // 2) % 2


def user_model(i: int) -> dict:
    """A user as JupyterHub 5/6 lists it to a token with read:users and read:servers."""
    name = username(i)
    vendor, count = gpu_of(i)
    started = iso(T0)
    return {
        "kind": "user",
        "name": name,
        "admin": False,
        "roles": ["user"],
        "groups": ["gpu-users"],
        "server": f"/user/{name}/",
        "pending": None,
        "created": iso(CREATED),
        "last_activity": started,
        "servers": {
            "": {
                "name": "",
                "full_name": f"{name}/",
                "last_activity": started,
                "started": started,
                "pending": None,
                "ready": True,
                "stopped": False,
                "url": f"/user/{name}/",
                "user_options": {"gpu_vendor": vendor, "gpu_count": str(count)},
                "progress_url": f"/hub/api/users/{name}/server/progress",
                "full_url": None,
                "full_progress_url": None,
            }
        },
    }


def serve_hub(n: int) -> None:
    """``GET /hub/api/users?state=active`` over ``n`` users, one ready server each."""
    import tornado.web
    from tornado.httpserver import HTTPServer
    from tornado.ioloop import IOLoop
    from tornado.netutil import bind_sockets

    users = [user_model(i) for i in range(n)]
    pages: dict[tuple[int, int], bytes] = {}

    class Users(tornado.web.RequestHandler):
        def get(self):
            if self.request.headers.get("Authorization") != f"token {TOKEN}":
                raise tornado.web.HTTPError(403)
            if self.get_argument("state", None) != "active":
                raise tornado.web.HTTPError(400, "this imitation lists active users only")
            if "jupyterhub-pagination" not in self.request.headers.get("Accept", ""):
                raise tornado.web.HTTPError(400, "pagination header expected")
            offset = max(0, int(self.get_argument("offset", "0")))
            limit = min(HUB_MAX_PAGE, max(1, int(self.get_argument("limit", "50"))))
            body = pages.get((offset, limit))
            if body is None:
                following = None
                if offset + limit < n:
                    following = {
                        "offset": offset + limit,
                        "limit": limit,
                        "url": f"{self.request.protocol}://{self.request.host}/hub/api/users"
                        f"?state=active&offset={offset + limit}&limit={limit}",
                    }
                body = json.dumps(
                    {
                        "items": users[offset : offset + limit],
                        "_pagination": {
                            "offset": offset,
                            "limit": limit,
                            "total": n,
                            "next": following,
                        },
                    }
                ).encode()
                pages[(offset, limit)] = body
            self.set_header("Content-Type", "application/json")
            self.write(body)

    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(tornado.web.Application([(r"/hub/api/users", Users)]))
    server.add_sockets(sockets)
    print(sockets[0].getsockname()[1], flush=True)
    IOLoop.current().start()


class HubProcess:
    def __init__(self, n: int):
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve-hub", str(n)],
            stdout=subprocess.PIPE,
            text=True,
        )
        port = int(self.process.stdout.readline())
        self.api = HubAPI(f"http://127.0.0.1:{port}/hub/api", TOKEN)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


# ---- data --------------------------------------------------------------------------------


def populate(engine, n: int) -> None:
    """N open sessions (one per user, default server) over N/4 projects; bulk inserts."""
    projects = max(1, n // MEMBERS_PER_PROJECT)
    with engine.begin() as connection:
        connection.execute(
            insert(Company),
            [
                {"id": p, "name": f"公司 {p}", "business_number": f"{p:08d}", "created_at": CREATED}
                for p in range(1, projects + 1)
            ],
        )
        connection.execute(
            insert(Project),
            [
                {
                    "id": p,
                    "company_id": p,
                    "name": f"計畫 {p}",
                    "category": "training",
                    "status": ProjectStatus.APPROVED,
                    "tier": None,
                    "window_start": WINDOW_START,
                    "window_end": WINDOW_END,
                    "max_gpus_per_server": 2,
                    "created_at": CREATED,
                }
                for p in range(1, projects + 1)
            ],
        )
        connection.execute(
            insert(Account),
            [
                {
                    "id": i + 1,
                    "username": username(i),
                    "email": "",
                    "display_name": "",
                    "is_operator": False,
                    "is_reviewer": False,
                    "created_at": CREATED,
                }
                for i in range(n)
            ],
        )
        connection.execute(
            insert(Membership),
            [
                {
                    "project_id": project_of(i, projects),
                    "account_id": i + 1,
                    "role": "trainee",
                    "created_at": CREATED,
                }
                for i in range(n)
            ],
        )
        connection.execute(
            insert(LedgerEntry),
            [
                {
                    "project_id": p,
                    "kind": LedgerKind.GRANT,
                    "amount_millipoints": GRANT,
                    "reason": "benchmark",
                    "actor": "operator",
                    "created_at": CREATED,
                }
                for p in range(1, projects + 1)
            ],
        )
        connection.execute(
            insert(UsageSession),
            [
                {
                    "id": i + 1,
                    "project_id": project_of(i, projects),
                    "account_id": i + 1,
                    "username": username(i),
                    "server_name": "",
                    "gpu_vendor": gpu_of(i)[0],
                    "gpu_count": gpu_of(i)[1],
                    "devices": "",
                    "simulated": True,
                    "interval_seconds": INTERVAL,
                    "started_at": T0,
                    "last_seen_at": None,
                    "stopped_at": None,
                    "charged_seconds": 0,
                    "charged_periods": 0,
                    "stop_reason": "",
                }
                for i in range(n)
            ],
        )
        for table in ("companies", "projects", "accounts", "usage_sessions"):
            connection.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}"
                )
            )
        connection.execute(text("ANALYZE"))


def project_of(i: int, projects: int) -> int:
    return min(i // MEMBERS_PER_PROJECT, projects - 1) + 1


def state_of(engine) -> tuple:
    """What a pass leaves behind: sessions, usage charges, balances."""
    with engine.connect() as connection:
        sessions = connection.execute(
            select(
                UsageSession.id,
                UsageSession.charged_periods,
                UsageSession.charged_seconds,
                UsageSession.last_seen_at,
                UsageSession.stopped_at,
                UsageSession.stop_reason,
            ).order_by(UsageSession.id)
        ).all()
        charges = connection.execute(
            select(
                LedgerEntry.session_id,
                LedgerEntry.period_index,
                LedgerEntry.covers_from_seconds,
                LedgerEntry.covers_to_seconds,
                LedgerEntry.amount_millipoints,
            )
            .where(LedgerEntry.kind == LedgerKind.USAGE)
            .order_by(LedgerEntry.session_id, LedgerEntry.period_index)
        ).all()
        balances = connection.execute(
            select(LedgerEntry.project_id, func.sum(LedgerEntry.amount_millipoints))
            .group_by(LedgerEntry.project_id)
            .order_by(LedgerEntry.project_id)
        ).all()
    return sessions, charges, balances


# ---- the two passes ----------------------------------------------------------------------


def reference_meter(db, *, now, running, listed_at) -> list[metering.StopOrder]:
    """The same pass written the naive way: an ORM loop, queries per project and session."""
    by_project = defaultdict(list)
    for session in metering.open_sessions(db):
        by_project[session.project_id].append(session)
    orders = []
    for project_id in sorted(by_project):
        project = ledger.lock_project(db, project_id)
        still_open = []
        for session in by_project[project_id]:
            key = (session.username, session.server_name)
            if key in running:
                session.last_seen_at = listed_at
            elif session.started_at < listed_at:
                metering.close_session(
                    db,
                    session,
                    now=now,
                    reason=metering.SERVER_GONE,
                    stopped_at=session.last_seen_at or session.started_at,
                )
                continue
            metering.settle(db, session, now=now, final=False)
            still_open.append(session)
        refusal = access.project_refusal(project, now)
        if refusal is None and ledger.balance(db, project_id) < metering.next_interval_need(
            still_open
        ):
            refusal = metering.NO_BALANCE
        for session in still_open:
            reason = refusal
            if reason is None and not access.is_member(db, project_id, session.username):
                reason = access.NOT_A_MEMBER
            if reason is not None:
                session.stop_reason = reason.message
                orders.append(
                    metering.StopOrder(session.id, session.username, session.server_name, reason)
                )
    return orders


@dataclass
class Side:
    label: str
    engine: object
    factory: object
    meter: object
    calls: int = 0
    executemany: int = 0
    fetch: list[float] = field(default_factory=list)
    transaction: list[float] = field(default_factory=list)
    adopt: list[float] = field(default_factory=list)
    db_calls: list[int] = field(default_factory=list)
    db_executemany: list[int] = field(default_factory=list)
    counting: bool = False

    def __post_init__(self):
        @event.listens_for(self.engine, "before_cursor_execute")
        def _count(conn, cursor, statement, parameters, context, executemany):
            if self.counting:
                self.calls += 1
                self.executemany += bool(executemany)

    @property
    def totals(self) -> list[float]:
        return [sum(t) for t in zip(self.fetch, self.transaction, self.adopt, strict=True)]


async def one_pass(side: Side, hub: HubAPI, k: int, n: int, profile: cProfile.Profile | None):
    """What QuotaService.meter_once does, at T0 + k·(interval + 1) s."""
    listed_at = T0 + timedelta(seconds=k * (INTERVAL + 1))
    now = listed_at
    started = time.perf_counter()
    running = await hub.running_servers()
    fetched = time.perf_counter()
    assert len(running) == n, (len(running), n)
    side.calls = side.executemany = 0
    side.counting = True
    if profile:
        profile.enable()
    with database.transaction(side.factory) as db:
        orders = side.meter(db, now=now, running=running, listed_at=listed_at)
    metered = time.perf_counter()
    with database.transaction(side.factory) as db:
        orders += metering.adopt_unmetered(
            db, running, listed_at=listed_at, now=now, interval_seconds=INTERVAL
        )
    if profile:
        profile.disable()
    side.counting = False
    done = time.perf_counter()
    assert not orders, orders[:3]
    side.fetch.append(fetched - started)
    side.transaction.append(metered - fetched)
    side.adopt.append(done - metered)
    side.db_calls.append(side.calls)
    side.db_executemany.append(side.executemany)


def ours_meter(db, *, now, running, listed_at):
    return metering.meter(db, now=now, running=running, listed_at=listed_at)


@dataclass
class Result:
    n: int
    ours: Side
    reference: Side | None
    same: bool | None


async def measure(server, n: int, passes: int, with_reference: bool, profile: bool) -> Result:
    url = server.create_database(f"ours{n}")
    engine = database.make_engine(url)
    database.upgrade(engine)
    populate(engine, n)
    engine.dispose()
    ours = Side("ours", engine, database.make_session_factory(engine), ours_meter)
    reference = None
    if with_reference:
        admin = database.make_engine(server.url("postgres"))
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.execute(text(f'CREATE DATABASE "ref{n}" TEMPLATE "ours{n}"'))
        admin.dispose()
        ref_engine = database.make_engine(server.url(f"ref{n}"))
        reference = Side(
            "reference", ref_engine, database.make_session_factory(ref_engine), reference_meter
        )
    hub = HubProcess(n)
    profiler = cProfile.Profile() if profile else None
    try:
        for k in range(1, passes + 1):
            await one_pass(ours, hub.api, k, n, profiler)
            if reference:
                await one_pass(reference, hub.api, k, n, None)
    finally:
        hub.stop()
    same = None
    if reference:
        same = state_of(ours.engine) == state_of(reference.engine)
        reference.engine.dispose()
    sessions, charges, _ = state_of(ours.engine)
    assert len(charges) == n * passes, (len(charges), n * passes)
    assert all(s.charged_periods == passes for s in sessions)
    ours.engine.dispose()
    if profiler:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out).sort_stats("cumulative")
        stats.print_stats(30)
        print(f"\n--- cProfile of (b) and (c) at N={n}, {passes} passes, by cumulative time ---")
        print(out.getvalue())
    return Result(n, ours, reference, same)


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def median(values) -> float:
    return statistics.median(values)


def report(results: list[Result], args) -> None:
    print()
    print(
        f"{platform.node()}: {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"{args.pg_version}, {args.passes} passes per size, median per pass; "
        f"load average {args.load_before} before, {load()} after"
    )
    print()
    head = (
        "| N | ours s/pass | of which hub list | of which meter() | of which adopt "
        "| DB calls/pass "
        "| µs/server | reference s/pass | reference DB calls | ratio ref/ours |"
    )
    print(head)
    print("|---" * 10 + "|")
    for r in results:
        ours_s = median(r.ours.totals)
        row = [
            f"{r.n:,}",
            f"{ours_s:.3f}",
            f"{median(r.ours.fetch):.3f}",
            f"{median(r.ours.transaction):.3f}",
            f"{median(r.ours.adopt):.3f}",
            f"{median(r.ours.db_calls):g}",
            f"{ours_s / r.n * 1e6:.0f}",
        ]
        if r.reference:
            ref_s = median(r.reference.totals)
            row += [f"{ref_s:.3f}", f"{median(r.reference.db_calls):,g}", f"{ref_s / ours_s:.1f}"]
        else:
            row += ["–", "–", "–"]
        print("| " + " | ".join(row) + " |")
    print()
    for r in results:
        line = (
            f"N={r.n:,}: ours per pass {', '.join(f'{s:.3f}' for s in r.ours.totals)} s "
            f"(meter() {', '.join(f'{s:.3f}' for s in r.ours.transaction)}; "
            f"adopt {', '.join(f'{s:.3f}' for s in r.ours.adopt)}); "
            f"DB calls {r.ours.db_calls} of which executemany {r.ours.db_executemany}"
        )
        if r.reference:
            line += (
                f"; reference {', '.join(f'{s:.3f}' for s in r.reference.totals)} s "
                f"(naive meter {', '.join(f'{s:.3f}' for s in r.reference.transaction)}), "
                f"DB calls {r.reference.db_calls}; meter()-only ratio "
                f"{median(r.reference.transaction) / median(r.ours.transaction):.1f}; "
                f"same ledger and sessions: {'yes' if r.same else 'NO'}"
            )
        print(line)
    for smaller, larger in itertools.pairwise(results):
        growth = median(larger.ours.totals) / median(smaller.ours.totals)
        print(
            f"N {smaller.n:,} → {larger.n:,} (×{larger.n / smaller.n:g}): ours ×{growth:.1f}, "
            f"meter() ×{median(larger.ours.transaction) / median(smaller.ours.transaction):.1f}"
        )
    if len(results) > 1:
        # least squares, cost = fixed + per_server · N, over the medians
        xs = [r.n for r in results]
        ys = [median(r.ours.totals) for r in results]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
            (x - mx) ** 2 for x in xs
        )
        print(f"fit: ours ≈ {(my - slope * mx) * 1e3:.0f} ms + {slope * 1e6:.0f} µs × N")
    largest = results[-1]
    verdict = median(largest.ours.totals)
    print(
        f"N={largest.n:,}: {verdict:.3f} s per pass: "
        f"{'under' if verdict < 1 else 'OVER'} the 1 s budget"
    )
    if any(r.same is False for r in results):
        sys.exit("the reference and ours disagree: see above")


async def measure_all(server, args) -> list[Result]:
    results = []
    for n in args.sizes:
        print(f"N={n:,} ...", flush=True)
        profile = args.profile and n == max(args.sizes)
        results.append(await measure(server, n, args.passes, not args.no_reference, profile))
    return results


def main(args) -> None:
    from tests.postgres import PostgresServer

    started = time.perf_counter()
    args.load_before = load()
    server = PostgresServer().start()
    try:
        args.pg_version = subprocess.run(
            [str(server.bin / "postgres"), "--version"], capture_output=True, text=True
        ).stdout.strip()
        results = asyncio.run(measure_all(server, args))
    finally:
        server.stop()
    report(results, args)
    print(f"\n(whole run {time.perf_counter() - started:.0f} s)")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[100, 1000, 10000],
        help="running servers, comma-separated (100,1000,10000)",
    )
    parser.add_argument("--passes", type=int, default=5, help="timed passes per size (5)")
    parser.add_argument("--no-reference", action="store_true", help="skip the naive ORM pass")
    parser.add_argument("--profile", action="store_true", help="cProfile (b) and (c) at largest N")
    parser.add_argument("--serve-hub", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.serve_hub is not None:
        serve_hub(arguments.serve_hub)
    else:
        main(arguments)
