"""The hub's authenticator: OpenID Connect sign-in, with access decided by the quota service.

Sign-in itself is plain ``GenericOAuthenticator`` against any OIDC provider (Keycloak in
production, a local provider in the embedded default). What a person may do comes from
the quota service and is applied as JupyterHub groups (``manage_groups``), which carry
the RBAC roles defined in the hub configuration: ``gpu-users`` may start servers,
``operators`` are admins, ``reviewers`` are reviewers. The groups are recomputed at every
sign-in, after ``auth_refresh_age``, and before every spawn (``refresh_pre_spawn``).
"""

from __future__ import annotations

from oauthenticator.generic import GenericOAuthenticator
from tornado import web
from traitlets import Bool, Set, Unicode, default

from quota_service.client import QuotaRefusal, QuotaServiceClient, QuotaServiceUnavailable

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
        try:
            access = await self.quota.access(name)
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
            return await super().authenticate(handler, data, **kwargs)
        except _AccessUnknown:
            raise web.HTTPError(503, UNAVAILABLE) from None

    async def refresh_user(self, user, handler=None, **kwargs):
        try:
            return await super().refresh_user(user, handler, **kwargs)
        except _AccessUnknown:
            if self.keep_access_on_outage:
                return True
            return False

    def access_for_page(self, username: str) -> dict | None:
        return self.last_access.get(username)


def home_page_access(user) -> dict | None:
    """``template_vars`` entry for the hub's home page: what this person may do, and why."""
    if user is None:
        return None
    from jupyterhub.app import JupyterHub

    authenticator = JupyterHub.instance().authenticator
    if isinstance(authenticator, AIPowerAuthenticator):
        return authenticator.access_for_page(user.name)
    return None
