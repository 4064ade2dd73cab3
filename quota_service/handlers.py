"""HTTP handlers: thin; the domain logic lives in the service modules."""

from __future__ import annotations

import json
import logging
from http.client import responses
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlparse

from jupyterhub.services.auth import HubOAuthenticated, UserNotAllowed
from tornado import web

from spawner.points import points_to_millipoints

from . import (
    access,
    audit,
    i18n,
    ledger,
    metering,
    network,
    notifications,
    projects,
    reports,
    sanctions,
)
from . import db as database
from .metering import ServerRequest, SessionRefused
from .models import Account, Project, ProjectStatus, UsageSession
from .timewindow import utcnow

OPENAPI = Path(__file__).parent / "openapi.yaml"
log = logging.getLogger(__name__)


class BaseHandler(HubOAuthenticated, web.RequestHandler):
    """Identifies the caller through the hub (cookie or token) before any method runs."""

    @property
    def service(self):
        return self.settings["service"]

    async def prepare(self):
        model = await self.hub_auth.get_user(self, sync=False)
        try:
            self._hub_auth_user_cache = self.check_hub_user(model) if model else None
        except UserNotAllowed:
            self._hub_auth_user_cache = None
            raise web.HTTPError(
                403, "這個帳號不能使用本服務 / not allowed to use this service"
            ) from None
        # rules of use: no connections from banned regions (recorded, then refused)
        network.guard_quota_request(self)

    def db(self):
        return database.transaction(self.service.session_factory)

    @property
    def username(self) -> str:
        return self.current_user["name"]

    @property
    def is_operator(self) -> bool:
        return self.service.admin_scope in self.current_user.get("scopes", [])

    def account(self, db) -> Account:
        """The signed-in person's account (made at their first visit)."""
        return access.account_of(db, self.username, now=utcnow())

    @property
    def is_reviewer(self) -> bool:
        return self.service.review_scope in self.current_user.get("scopes", [])

    @property
    def translator(self) -> i18n.Translator:
        """The page's language: ``?lang=`` (then remembered in a cookie), the cookie, or zh_TW."""
        if not hasattr(self, "_translator"):
            requested = self.get_query_argument("lang", None)
            locale = i18n.choose_locale(requested, self.get_cookie(i18n.COOKIE))
            if requested == locale:
                self.set_cookie(
                    i18n.COOKIE,
                    locale,
                    path=self.service.service_prefix,
                    httponly=True,
                    samesite="Lax",
                    expires_days=365,
                )
            self._translator = self.service.translators[locale]
        return self._translator

    def language_links(self) -> list[tuple[str, str, str]]:
        """(locale, label, href) of the language switch: this page in each language."""
        query = [(k, v) for k, v in parse_qsl(urlparse(self.request.uri).query) if k != "lang"]
        path = urlparse(self.request.uri).path
        return [
            (locale, label, path + "?" + urlencode([*query, ("lang", locale)]))
            for locale, label in (("zh_TW", "中文"), ("en", "English"))
        ]

    def render_page(self, template: str, **ns) -> None:
        page = self.service.templates.get_template(template)
        signed_in = self.current_user is not None
        self.finish(
            page.render(
                prefix=self.service.service_prefix,
                hub_static=self.service.hub_static,
                hub_home=self.service.hub_home,
                user=self.current_user,
                is_operator=signed_in and self.is_operator,
                is_reviewer=signed_in and self.is_reviewer,
                translator=self.translator,
                _=self.translator.gettext,
                language_links=self.language_links(),
                xsrf_form_html=self.xsrf_form_html(),
                **ns,
            )
        )

    def write_error(self, status_code: int, **kwargs) -> None:
        message = self._reason
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message
        elif status_code >= 500:
            message = "服務發生錯誤，請稍後再試 / the service had an error; please try again later"
        self.render_page(
            "error.html",
            status_code=status_code,
            status=responses.get(status_code, ""),
            message=message,
        )


class APIHandler(BaseHandler):
    """JSON in and out; authenticated by a token in the Authorization header only, so
    a browser's cookies can never act here (which is why no XSRF check is needed)."""

    def check_xsrf_cookie(self):
        pass

    async def prepare(self):
        if not self.request.headers.get("Authorization"):
            raise web.HTTPError(
                401, "需要 API token / an API token is required (Authorization: token ...)"
            )
        await super().prepare()
        if self.current_user is None:
            raise web.HTTPError(403, "token 無效或權限不足 / invalid token or missing scope")

    def get_login_url(self):
        raise web.HTTPError(403)

    def write_json(self, data, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(data, ensure_ascii=False))

    def read_json(self) -> dict:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "請求內容不是 JSON / body is not JSON") from None
        if not isinstance(body, dict):
            raise web.HTTPError(400, "請求內容必須是 JSON 物件 / body must be a JSON object")
        return body

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = responses.get(status_code, "error")
        reason = "error"
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message, reason = exc.log_message, exc.reason or reason
        elif status_code >= 500:
            message = "服務發生錯誤 / internal error"
        self.set_status(status_code)
        self.write_json({"status": status_code, "reason": reason, "message": message}, status_code)


class InternalAPIHandler(APIHandler):
    """Called by the hub itself; needs the hub agent's scope."""

    @property
    def hub_scopes(self):
        return {self.service.hub_scope}


# ---- pages -------------------------------------------------------------------------


class OverviewPage(BaseHandler):
    @web.authenticated
    def get(self):
        with self.db() as db:
            own = reports.projects_of(db, self.username)
            summaries = [reports.project_summary(db, p) for p in own]
            decision = access.decide(db, self.username, utcnow())
            refusal = decision.refusal
        self.render_page("overview.html", projects=summaries, refusal=refusal)


class ProjectPage(BaseHandler):
    @web.authenticated
    def get(self, project_id: str):
        with self.db() as db:
            project = db.get(Project, int(project_id))
            if project is None:
                raise web.HTTPError(404, "沒有這個計畫 / no such project")
            if not (self.is_operator or access.is_member(db, project.id, self.username)):
                raise web.HTTPError(
                    403, "你不是這個計畫的成員 / you are not a member of this project"
                )
            summary = reports.project_summary(db, project)
            history = reports.usage_history(db, project.id)
            sessions = reports.recent_sessions(db, project.id)
            now = utcnow()
            usage = reports.project_usage(db, project, now)
            closing = reports.closing_view(db, project, now)
        self.render_page(
            "project.html",
            project=summary,
            history=history,
            sessions=sessions,
            usage=usage,
            closing=closing,
        )


REASON_REQUIRED = "請填寫原因 / a reason is required"
POINTS_HELP = "請輸入點數，例如 100 或 12.5 / type a number of points, e.g. 100 or 12.5"


def parse_points(typed: str) -> tuple[int, str | None]:
    """Millipoints of the points an operator typed, exactly, or a bilingual message for the
    field when they are not a number of points."""
    if not typed:
        return 0, POINTS_HELP
    try:
        return points_to_millipoints(typed), None
    except ValueError as e:
        if "decimal places" in str(e):
            return 0, "點數最多三位小數 / points have at most three decimal places"
        if "too many" in str(e):
            return 0, "點數太大 / too many points"
        return 0, POINTS_HELP


class AdminPage(BaseHandler):
    def require_operator(self):
        if not self.is_operator:
            raise web.HTTPError(403, "只有營運管理員可以使用 / operators only")

    @web.authenticated
    def get(self, errors: dict | None = None, typed: dict | None = None):
        self.require_operator()
        with self.db() as db:
            board = reports.dashboard(db, utcnow())
        self.render_page(
            "admin.html",
            projects=board["projects"],
            overdue=board["overdue"],
            errors=errors or {},
            typed=typed or {},
        )


class AdminProjectAction(AdminPage):
    """Suspend or resume a project, or grant points: each with a reason, each audited."""

    @web.authenticated
    async def post(self, project_id: str, action: str):
        self.require_operator()
        reason = self.get_body_argument("reason", "").strip()
        typed = {
            "project_id": int(project_id),
            "form": action,
            "reason": reason,
            "points": self.get_body_argument("points", "").strip(),
        }
        errors: dict[str, str] = {}
        if not reason:
            errors["reason"] = REASON_REQUIRED
        millipoints = 0
        if action == "grant":
            millipoints, message = parse_points(typed["points"])
            if not message and millipoints <= 0:
                message = "核發點數必須大於 0 / a grant must be positive"
            if message:
                errors["points"] = message
        if not errors:
            try:
                with self.db() as db:
                    project = ledger.lock_project(db, int(project_id))
                    now = utcnow()
                    if action == "grant":
                        ledger.grant(
                            db, project, millipoints, actor=self.username, reason=reason, now=now
                        )
                    else:
                        target = (
                            ProjectStatus.SUSPENDED
                            if action == "suspend"
                            else ProjectStatus.APPROVED
                        )
                        holding = sanctions.active_suspension(db, project.id)
                        if target == ProjectStatus.APPROVED and holding is not None:
                            raise projects.TransitionNotAllowed(
                                f"計畫因違規處分 #{holding.id} 停權，請在違規紀錄解除 / suspended "
                                f"by sanction #{holding.id}: lift it in the violations register"
                            )
                        projects.change_status(
                            db, project, target, actor=self.username, reason=reason, now=now
                        )
            except projects.TransitionNotAllowed as e:
                errors["status"] = str(e)
        if errors:
            self.set_status(400)
            return self.get(errors=errors, typed=typed)
        if action == "suspend":
            # stop the project's servers now rather than at the next metering pass
            await self.service.meter_once()
        self.redirect(self.service.service_prefix + "admin")


# ---- public API ----------------------------------------------------------------------


class ProjectsAPI(APIHandler):
    def get(self):
        with self.db() as db:
            own = reports.projects_of(db, self.username)
            self.write_json([reports.project_summary(db, p) for p in own])


class OpenAPISpec(web.RequestHandler):
    def get(self):
        self.set_header("Content-Type", "application/yaml; charset=utf-8")
        self.finish(OPENAPI.read_bytes())


# ---- internal API (the hub's authenticator and spawners) --------------------------------


class AccessAPI(InternalAPIHandler):
    def get(self, username: str):
        email = self.get_query_argument("email", "")[:320]
        with self.db() as db:
            if email:  # a sign-in: the identity provider's address ties it to the account
                access.link_sign_in(db, username, email, now=utcnow())
            decision = access.decide(db, username, utcnow())
            project = decision.project
            self.write_json(
                {
                    "username": username,
                    "groups": decision.groups,
                    "may_spawn": decision.may_spawn,
                    "refusal": None
                    if decision.refusal is None
                    else {
                        "code": decision.refusal.code,
                        "zh": decision.refusal.zh,
                        "en": decision.refusal.en,
                    },
                    "project": None if project is None else reports.project_summary(db, project),
                    "warnings": []
                    if project is None
                    else notifications.current_warnings(
                        db, project, self.service.low_balance_percents
                    ),
                    "notice": reports.last_stop_notice(db, username),
                    "trusted_networks": access.trusted_networks_of(db, project),
                }
            )


class SessionsAPI(InternalAPIHandler):
    def post(self):
        body = self.read_json()
        try:
            request = ServerRequest(
                username=str(body["username"]),
                server_name=str(body.get("server_name", "")),
                gpu_vendor=str(body["gpu_vendor"]),
                gpu_count=int(body["gpu_count"]),
                devices=[str(d) for d in body.get("devices", [])],
                simulated=bool(body.get("simulated", False)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise web.HTTPError(400, f"欄位錯誤 / bad field: {e}") from None
        try:
            with self.db() as db:
                session = metering.open_session(
                    db, request, now=utcnow(), interval_seconds=self.service.metering_interval
                )
                opened = reports.server_summary(session) | {"project_id": session.project_id}
        except SessionRefused as e:
            # a refusal is an answer, not an error: no traceback in the log
            log.info("Refused %s's server %r: %s", request.username, request.server_name, e)
            refusal = e.refusal
            self.service.metrics.spawns_refused.labels(refusal.code).inc()
            with self.db() as db:
                audit.record(
                    db,
                    actor=request.username,
                    action="spawn.refused",
                    subject_type="user",
                    subject_id=request.username,
                    at=utcnow(),
                    reason=refusal.code,
                    server_name=request.server_name,
                )
            return self.write_json(
                {"status": 403, "reason": refusal.code, "message": refusal.message}, 403
            )
        self.write_json(opened, 201)


class RefusalsAPI(InternalAPIHandler):
    """The hub reports the spawns its spawners refused before asking for a session
    (bad options, no free device): counted for the metrics, recorded in the audit trail."""

    def post(self):
        body = self.read_json()
        reason = str(body.get("reason", ""))[:60]
        username = str(body.get("username", ""))[:255]
        if not reason or not username:
            raise web.HTTPError(400, "需要 username 與 reason / username and reason are required")
        self.service.metrics.spawns_refused.labels(reason).inc()
        with self.db() as db:
            audit.record(
                db,
                actor=username,
                action="spawn.refused",
                subject_type="user",
                subject_id=username,
                at=utcnow(),
                reason=reason,
                server_name=str(body.get("server_name", ""))[:255],
            )
        self.set_status(204)
        self.finish()


class NetworkRefusalsAPI(APIHandler):
    """A single-user server reports a banned-region connection it refused, with its own token:
    recorded against the server's owner and their company, like the hub's refusals. The
    service judges the address itself, so a report cannot record anything but a refusal the
    rules call for."""

    def post(self):
        if self.current_user.get("kind") != "user":
            raise web.HTTPError(
                403, "只有使用者伺服器能回報 / only a user's server reports refusals"
            )
        body = self.read_json()
        policy = network.NetworkPolicy.instance()
        refusal = policy.region_refusal(network.parse_address(str(body.get("address", ""))))
        if refusal is None:
            raise web.HTTPError(
                422,
                "這個位址不在禁止地區 / this address is not in a banned region",
                reason="not-banned",
            )
        server = str(body.get("server_name", ""))[:255] or "default"
        attempt = f"server {server}: {str(body.get('attempt', ''))[:200]}"
        with self.db() as db:
            event = network.record_refusal(
                db,
                refusal,
                username=self.username,
                attempt=attempt,
                actor=self.username,
                now=utcnow(),
            )
            self.write_json({"recorded": event.id, "country": refusal.country}, 201)


class MetricsHandler(APIHandler):
    """Prometheus exposition; needs a token with JupyterHub's own ``read:metrics`` scope."""

    @property
    def hub_scopes(self):
        return {"read:metrics"}

    def get(self):
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(self.service.metrics.exposition())


class SessionCloseAPI(InternalAPIHandler):
    def post(self, session_id: str):
        body = self.read_json()
        with self.db() as db:
            session = db.get(UsageSession, int(session_id))
            if session is None:
                raise web.HTTPError(404, "沒有這個使用紀錄 / no such session")
            # same lock order as the metering pass (project first), so the two never deadlock
            ledger.lock_project(db, session.project_id)
            db.refresh(session)
            charged = metering.close_session(
                db,
                session,
                now=utcnow(),
                reason=str(body.get("reason", "")),
                void=body.get("void") is True,
            )
            self.write_json(
                reports.server_summary(session)
                | {
                    "stopped_at": session.stopped_at.isoformat(),
                    "charged_seconds": session.charged_seconds,
                    "charged_now_millipoints": charged,
                }
            )


def routes() -> list[tuple[str, type]]:
    from . import (  # they build on the handlers above
        application_api,
        application_pages,
        project_pages,
        review_pages,
        violation_pages,
    )

    return project_pages.routes() + [
        *application_pages.routes(),
        *violation_pages.routes(),
        (r"", OverviewPage),
        (r"projects/(\d+)", ProjectPage),
        (r"admin", AdminPage),
        (r"admin/projects/(\d+)/(suspend|resume|grant)", AdminProjectAction),
        (r"api/v1/projects", ProjectsAPI),
        (r"api/v1/openapi.yaml", OpenAPISpec),
        (r"api/v1/internal/access/([^/]+)", AccessAPI),
        (r"api/v1/internal/sessions", SessionsAPI),
        (r"api/v1/internal/sessions/(\d+)/close", SessionCloseAPI),
        (r"api/v1/internal/refusals", RefusalsAPI),
        (r"api/v1/network-refusals", NetworkRefusalsAPI),
        (r"metrics", MetricsHandler),
        *application_api.routes(),
        *review_pages.routes(),
    ]
