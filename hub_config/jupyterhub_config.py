"""JupyterHub configuration of the embedded default (one machine).

Every value comes from an environment variable with a default for ``make demo``; the
launcher (``hub_config/demo.py``) sets them. Production (Helm) sets the same things.
"""

import os
import sys
from pathlib import Path

from hub_config.roles import CUSTOM_SCOPES, load_roles
from quota_service.db import normalize_url

c = get_config()  # noqa: F821 (provided by JupyterHub)

HERE = Path(__file__).parent
ROOT = HERE.parent
env = os.environ.get
state = Path(env("AIPOWER_STATE_DIR", str(ROOT / "state"))).resolve()
state.mkdir(parents=True, exist_ok=True)

# ---- the hub and its proxy ---------------------------------------------------------
c.JupyterHub.bind_url = env("AIPOWER_HUB_BIND_URL", "http://127.0.0.1:8000")
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(env("AIPOWER_HUB_INTERNAL_PORT", "8081"))
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{env('AIPOWER_PROXY_API_PORT', '8001')}"
c.ConfigurableHTTPProxy.command = [
    env("AIPOWER_CHP", str(ROOT / ".local/node/node_modules/.bin/configurable-http-proxy"))
]
c.ConfigurableHTTPProxy.pid_file = str(state / "proxy.pid")
c.JupyterHub.db_url = normalize_url(
    env("AIPOWER_HUB_DB_URL", f"sqlite:///{state / 'jupyterhub.sqlite'}")
)
c.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = str(state / "jupyterhub.pid")
c.JupyterHub.template_paths = [str(HERE / "templates")]
c.JupyterHub.allow_named_servers = True
# land on the home page, which says what this person may do (and why not)
c.JupyterHub.redirect_to_server = False
c.JupyterHub.named_server_limit_per_user = int(env("AIPOWER_NAMED_SERVER_LIMIT", "3"))

# ---- sign-in: OpenID Connect ---------------------------------------------------------
c.JupyterHub.authenticator_class = "authenticator.AIPowerAuthenticator"
c.AIPowerAuthenticator.client_id = env("AIPOWER_OIDC_CLIENT_ID", "aipower-hub")
c.AIPowerAuthenticator.client_secret = env("AIPOWER_OIDC_CLIENT_SECRET", "")
c.AIPowerAuthenticator.authorize_url = env("AIPOWER_OIDC_AUTHORIZE_URL", "")
c.AIPowerAuthenticator.token_url = env("AIPOWER_OIDC_TOKEN_URL", "")
c.AIPowerAuthenticator.userdata_url = env("AIPOWER_OIDC_USERINFO_URL", "")
c.AIPowerAuthenticator.username_claim = env("AIPOWER_OIDC_USERNAME_CLAIM", "preferred_username")
c.AIPowerAuthenticator.oauth_callback_url = env(
    "AIPOWER_OIDC_CALLBACK_URL", c.JupyterHub.bind_url.rstrip("/") + "/hub/oauth_callback"
)
c.AIPowerAuthenticator.auth_refresh_age = int(env("AIPOWER_AUTH_REFRESH_AGE", "60"))

# ---- RBAC ----------------------------------------------------------------------------
c.JupyterHub.custom_scopes = CUSTOM_SCOPES
c.JupyterHub.load_roles = load_roles()

# ---- the quota service -----------------------------------------------------------------
quota_port = env("AIPOWER_QUOTA_PORT", "10101")
service_env = {
    "AIPOWER_QUOTA_DB_URL": env("AIPOWER_QUOTA_DB_URL", f"sqlite:///{state / 'quota.sqlite'}"),
    "AIPOWER_METERING_INTERVAL": env("AIPOWER_METERING_INTERVAL", "60"),
    "AIPOWER_HOMES_DIR": str(state / "homes"),
    # uploaded closing reports, slides and applications' supporting files (outside the database)
    "AIPOWER_FILES_DIR": env("AIPOWER_FILES_DIR", str(state / "files")),
    "PYTHONPATH": str(ROOT),
}
# the service sees only what it is given: pass its own settings through
service_env.update(
    {
        name: value
        for name, value in os.environ.items()
        if name.startswith(("AIPOWER_SMTP_", "AIPOWER_GPU_IDLE_"))
    }
)
for name in (
    "AIPOWER_NOTICE_INTERVAL",
    "AIPOWER_MAIL_FROM",
    "AIPOWER_CLOSING_MAX_MB",
    "AIPOWER_APPLICATION_MAX_MB",
    "AIPOWER_QUOTA_COOKIE_SECRET",
):
    if env(name):
        service_env[name] = env(name)
c.JupyterHub.services = [
    {
        "name": "quota",
        "url": f"http://127.0.0.1:{quota_port}",
        "command": [sys.executable, "-m", "quota_service.app"],
        "environment": service_env,
        "oauth_client_allowed_scopes": ["custom:aipower:admin", "custom:aipower:review"],
        # the platform's own service: no consent page between the hub and it
        "oauth_no_confirm": True,
    },
    {"name": "aipower-hub-agent", "api_token": env("AIPOWER_HUB_AGENT_TOKEN", "")},
]
c.QuotaServiceClient.url = f"http://127.0.0.1:{quota_port}/services/quota"
c.QuotaServiceClient.timeout = float(env("AIPOWER_QUOTA_TIMEOUT", "10"))

# ---- spawning ------------------------------------------------------------------------
c.JupyterHub.spawner_class = "spawner.local.LocalGPUSpawner"
c.LocalGPUSpawner.home_dir_template = str(state / "homes" / "{username}")
c.Spawner.cmd = [str(Path(sys.executable).with_name("jupyterhub-singleuser"))]
c.Spawner.default_url = "/lab"
c.Spawner.http_timeout = 60
c.Spawner.poll_interval = int(env("AIPOWER_POLL_INTERVAL", "30"))
if os.geteuid() == 0:
    c.Spawner.args = ["--ServerApp.allow_root=True"]
c.LocalGPUSpawner.detect_gpus = env("AIPOWER_DETECT_GPUS", "1") == "1"
c.LocalGPUSpawner.simulated_inventory = {
    vendor: int(count)
    for vendor, count in (
        item.split("=") for item in env("AIPOWER_SIMULATED_GPUS", "nvidia=4,amd=4").split(",")
    )
}
c.Spawner.consecutive_failure_limit = int(env("AIPOWER_CONSECUTIVE_FAILURE_LIMIT", "5"))
# the balance in JupyterLab's status bar (spawner/notebook): the server's own token gets
# JupyterHub's default scopes (the `server` role: users:activity!user, access:servers!server)
# plus access:services!service=quota, to read its owner's projects, and nothing more. The
# local spawner tells the server where the quota service is (AIPOWER_QUOTA_URL: where the hub
# reaches it, c.QuotaServiceClient.url, unless c.Spawner.environment names another).
from spawner.notebook import server_token_scopes  # noqa: E402

c.Spawner.server_token_scopes = server_token_scopes("quota")

# the home page tells people what they may do, and why not
from authenticator import home_page_access  # noqa: E402

c.JupyterHub.template_vars = {"aipower_access": home_page_access}

# ---- rules of use: where connections come from; idle servers ----------------------------
# docs/network-policy.md. The hub (authenticator), the quota service and the single-user
# servers decide alike: each gets the same settings.
from quota_service.network import LOOPBACK, NetworkPolicy, split_list  # noqa: E402

# the proxy (and the hub, towards the quota service) connect from here; their X-Forwarded-For
# entry is believed
c.NetworkPolicy.proxy_networks = split_list(env("AIPOWER_PROXY_NETWORKS", ",".join(LOOPBACK)))
# load balancers in front of the proxy whose X-Forwarded-For entries are believed too
c.NetworkPolicy.trusted_proxies = split_list(env("AIPOWER_TRUSTED_PROXIES", ""))
c.NetworkPolicy.banned_countries = split_list(env("AIPOWER_BANNED_COUNTRIES", "CN,HK,MO"))
# training members only from their project's trusted addresses: on in production
c.NetworkPolicy.enforce_trusted_networks = env("AIPOWER_ENFORCE_TRUSTED_NETWORKS", "0") == "1"
service_env.update(NetworkPolicy(config=c).environment())
# traffic to the single-user servers: the same rules, checked in each server by a
# jupyter_server extension that the spawner enables and configures
from authenticator import server_guard  # noqa: E402

c.Spawner.environment.update(server_guard.environment(NetworkPolicy(config=c)))
c.Spawner.args.extend(server_guard.server_args())

# servers idle by Jupyter activity are stopped (their metering closes with the stop)
idle_timeout = int(env("AIPOWER_IDLE_TIMEOUT", "3600"))
idle_cull_every = int(env("AIPOWER_IDLE_CULL_EVERY", str(max(1, min(300, idle_timeout // 2)))))
if idle_timeout < 1 or idle_cull_every < 1:
    raise ValueError("AIPOWER_IDLE_TIMEOUT and AIPOWER_IDLE_CULL_EVERY must be positive seconds")
c.JupyterHub.services.append(
    {
        # role `idle-culler` in hub_config/roles.py: least privilege
        "name": "idle-culler",
        "command": [
            sys.executable,
            "-m",
            "hub_config.with_parent",  # gone with the hub, even after kill -9
            "jupyterhub_idle_culler",
            f"--timeout={idle_timeout}",
            f"--cull-every={idle_cull_every}",
        ],
    }
)
