"""The hub's authenticator: OpenID Connect sign-in, with access decided by the quota service.

Sign-in itself is plain ``GenericOAuthenticator`` against any OIDC provider (Keycloak in
production, a local provider in the embedded default). What a person may do comes from
the quota service and is applied as JupyterHub groups (``manage_groups``), which carry
the RBAC roles defined in the hub configuration: ``gpu-users`` may start servers,
``operators`` are admins, ``reviewers`` are reviewers. The groups are recomputed at every
sign-in, after ``auth_refresh_age``, and before every spawn (``refresh_pre_spawn``).

The network rules of use are checked at the same moments (``quota_service.network``): a
sign-in, refresh or spawn from mainland China, Hong Kong or Macau is refused with a bilingual
message and reported to the quota service, which records it against the person; members of
an awarded training project are refused outside their project's trusted fixed addresses when
``NetworkPolicy.enforce_trusted_networks`` is on.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from oauthenticator.generic import GenericOAuthenticator
from tornado import web
from tornado.httpclient import AsyncHTTPClient
from traitlets import Bool, Set, Unicode, default

from quota_service.client import QuotaRefusal, QuotaServiceClient, QuotaServiceUnavailable
from quota_service.network import (
    BANNED_REGION,
    NetworkPolicy,
    NetworkRefusal,
    guard_application,
    is_platform_request,
)

UNAVAILABLE = "配額服務暫時無法使用，請稍後再試。 / The quota service is unavailable; please try again shortly."


class _AccessUnknown(Exception):
    pass


class AIPowerAuthenticator(GenericOAuthenticator):
    login_service = Unicode(
        "企業帳號 / Company account",
        help="Text of the sign-in button, e.g. '工商憑證 / Business certificate'.",
    ).tag(config=True)

    @default("manage_groups")
    def _default_manage_groups(self):
        return True

    @default("enable_auth_state")
    def _default_enable_auth_state(self):
        return True

    @default("allow_all")
    def _default_allow_all(self):
        # everyone the identity provider vouches for may sign in (applicants too);
        # what they may do is decided by their groups
        return True

    @default("admin_groups")
    def _default_admin_groups(self):
        return {"operators"}

    @default("refresh_pre_spawn")
    def _default_refresh_pre_spawn(self):
        return True

    @default("auth_refresh_age")
    def _default_auth_refresh_age(self):
        return 60

    @default("scope")
    def _default_scope(self):
        return ["openid", "profile", "email"]

    managed_groups = Set(
        Unicode(),
        {"operators", "reviewers", "gpu-users"},
        help="""The groups that the quota service decides, e.g. {"operators", "reviewers",
        "gpu-users"}. Groups outside this set that the service names are ignored.""",
    ).tag(config=True)

    keep_access_on_outage = Bool(
        True,
        help="""When the quota service cannot be reached during a refresh, keep the groups a
        user already has (True) rather than signing them out. Spawns still fail closed.""",
    ).tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.last_access: dict[str, dict] = {}

    @property
    def quota(self):
        return QuotaServiceClient.instance(parent=self).client()

    async def update_auth_model(self, auth_model):
        name = auth_model["name"]
        # the address the identity provider vouches for ties the sign-in to the account an
        # award made for that address (quota_service.access.link_sign_in)
        user_info = auth_model["auth_state"].get(self.user_auth_state_key) or {}
        try:
            access = await self.quota.access(name, str(user_info.get("email") or ""))
        except (QuotaServiceUnavailable, QuotaRefusal) as e:
            self.log.warning("Access of %s unknown: quota service: %s", name, e)
            raise _AccessUnknown() from e
        self.last_access[name] = access
        auth_model["auth_state"]["aipower"] = access
        return auth_model

    async def get_user_groups(self, auth_state):
        return set(auth_state["aipower"]["groups"]) & self.managed_groups

    async def authenticate(self, handler, data=None, **kwargs):
        try:
            auth_model = await super().authenticate(handler, data, **kwargs)
        except _AccessUnknown:
            raise web.HTTPError(503, UNAVAILABLE) from None
        if auth_model is not None and handler is not None:
            # checked once the person is known, so that the refusal is recorded against them
            name = auth_model["name"]
            await self.check_region(name, handler, "sign-in")
            access = auth_model["auth_state"]["aipower"]
            self.check_trusted_address(name, handler, access, "sign-in")
        return auth_model

    async def refresh_user(self, user, handler=None, **kwargs):
        """Also the pre-spawn check (``refresh_pre_spawn``). A network refusal raises 403:
        returning False would not stop a token-authenticated request."""
        if handler is not None:
            await self.check_region(user.name, handler, _attempt(handler))
        try:
            refreshed = await super().refresh_user(user, handler, **kwargs)
        except _AccessUnknown:
            refreshed = self.keep_access_on_outage
        if handler is not None and refreshed is not False:
            access = self.last_access.get(user.name)
            if access is None:  # the hub restarted and the refresh did not reach the service
                access = ((await user.get_auth_state()) or {}).get("aipower")
            self.check_trusted_address(user.name, handler, access, _attempt(handler))
        return refreshed

    # ---- the network rules of use ----------------------------------------------------------

    def get_handlers(self, app):
        handlers = super().get_handlers(app)
        # every hub request is checked for its region once the hub's tornado application
        # exists: JupyterHub builds it right after collecting these handlers
        init_tornado_application = app.init_tornado_application

        def init_and_guard():
            init_tornado_application()
            self.guard_hub(app)

        app.init_tornado_application = init_and_guard
        return handlers

    def guard_hub(self, app) -> None:
        # the sign-in pages pass: the callback refuses once the person is known, so that the
        # refusal is recorded against them
        sign_in = {app.hub_prefix + path for path in ("login", "oauth_login", "oauth_callback")}

        def decide(request):
            if request.path.rstrip("/") in sign_in or is_platform_request(request, self.network):
                return None
            return self.network.region_refusal(self.network.client_of(request))

        guard_application(app.tornado_application, decide, _hub_refusal_handler(self))
        self.log.info(
            "Network rules of use: banned %s; X-Forwarded-For believed from %s",
            ",".join(self.network.banned_countries),
            ",".join(self.network.proxy_networks + self.network.trusted_proxies),
        )

    @property
    def network(self) -> NetworkPolicy:
        return NetworkPolicy.instance(parent=self)

    async def check_region(self, name: str, handler, attempt: str) -> None:
        refusal = self.network.region_refusal(self.network.client_of(handler.request))
        if refusal is not None:
            await self.report_refusal(name, refusal, attempt)
            self._refuse(name, refusal, attempt)

    def check_trusted_address(self, name: str, handler, access: dict | None, attempt: str) -> None:
        refusal = self.network.trusted_refusal(self.network.client_of(handler.request), access)
        if refusal is not None:
            self._refuse(name, refusal, attempt)

    def _refuse(self, name: str, refusal: NetworkRefusal, attempt: str):
        self.log.warning(
            "Refused %s for %s from %s (%s): %s",
            attempt,
            name,
            refusal.address,
            refusal.country or "-",
            refusal.code,
        )
        error = web.HTTPError(403, refusal.message)
        # JupyterHub 5.5 shows a reason code instead of the message; both show this one
        error.jupyterhub_message = refusal.message
        raise error

    async def report_refusal(self, name: str, refusal: NetworkRefusal, attempt: str) -> None:
        """Have the quota service record the refusal: the person's access is asked for with
        their address forwarded (the hub is one of its trusted proxies), which the service
        refuses and records. The refusal stands whether or not the record succeeds."""
        quota = QuotaServiceClient.instance(parent=self)
        try:
            response = await AsyncHTTPClient().fetch(
                f"{quota.url.rstrip('/')}/api/v1/internal/access/{quote(name, safe='')}",
                headers={
                    "Authorization": f"token {quota.token}",
                    "X-Forwarded-For": refusal.address,
                    "X-AIPower-Attempt": attempt,
                },
                request_timeout=quota.timeout,
                connect_timeout=quota.timeout,
                raise_error=False,
            )
            recorded = response.code == 403 and BANNED_REGION.encode() in (response.body or b"")
        except OSError as e:
            self.log.warning("Refusal of %s not recorded: %s", name, e)
            return
        if not recorded:
            self.log.warning(
                "Refusal of %s not recorded: the quota service answered %s", name, response.code
            )

    def access_for_page(self, username: str) -> dict | None:
        return self.last_access.get(username)


def _attempt(handler) -> str:
    return f"{handler.request.method} {handler.request.path}"


def _hub_refusal_handler(authenticator: AIPowerAuthenticator):
    """Answers a hub request from a banned region: identifies the person when the request
    carries their cookie or token (without refreshing anything), has the refusal recorded,
    and answers 403 with the message (JSON for the REST API)."""
    from jupyterhub.handlers.base import BaseHandler

    class Refused(BaseHandler):
        def initialize(self, refusal: NetworkRefusal):
            self.refusal = refusal

        async def prepare(self):
            # the error page is rendered as for someone signed out
            self._jupyterhub_user = None
            self._resolve_roles_and_scopes()
            try:
                user = self.get_current_user_token() or self.get_current_user_cookie()
            except Exception:
                user = None
            attempt = _attempt(self)
            name = getattr(user, "name", None)
            if name:
                await authenticator.report_refusal(name, self.refusal, attempt)
            authenticator.log.warning(
                "Refused %s for %s from %s (%s): %s",
                attempt,
                name or "an unidentified client",
                self.refusal.address,
                self.refusal.country,
                self.refusal.code,
            )
            if self.request.path.startswith(self.hub.base_url + "api/"):
                self.set_status(403)
                self.set_header("Content-Type", "application/json; charset=utf-8")
                body = {"status": 403, "reason": self.refusal.code, "message": self.refusal.message}
                self.finish(json.dumps(body, ensure_ascii=False))
                return
            error = web.HTTPError(403, self.refusal.message)
            error.jupyterhub_message = self.refusal.message
            raise error

    return Refused


def home_page_access(user) -> dict | None:
    """``template_vars`` entry for the hub's home page: what this person may do, and why."""
    if user is None:
        return None
    from jupyterhub.app import JupyterHub

    authenticator = JupyterHub.instance().authenticator
    if isinstance(authenticator, AIPowerAuthenticator):
        return authenticator.access_for_page(user.name)
    return None
