"""``make demo``: the whole platform on one machine.

Prepares one state folder (secrets, SQLite files, homes), seeds the demo data, starts a
local OpenID Connect provider, then runs JupyterHub (which starts the proxy and the
quota service). Production runs the same hub configuration with other URLs and secrets.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from quota_service import db as database
from quota_service.timewindow import utcnow

from .seed import DEMO_ACCOUNTS, seed_demo

HERE = Path(__file__).parent


def secret_file(path: Path, make) -> str:
    """A secret created once and kept (0600) across restarts."""
    if not path.exists():
        path.write_text(make())
        path.chmod(0o600)
    return path.read_text().strip()


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state", default=os.environ.get("AIPOWER_STATE_DIR", "state"))
    parser.add_argument("--port", type=int, default=8000, help="public port of the hub")
    parser.add_argument("--hub-port", type=int, default=8081)
    parser.add_argument("--proxy-api-port", type=int, default=8001)
    parser.add_argument("--quota-port", type=int, default=10101)
    parser.add_argument("--oidc-port", type=int, default=9400)
    parser.add_argument("--smtp-port", type=int, default=8025, help="local mail catcher")
    parser.add_argument("--metering-interval", type=int, default=60)
    parser.add_argument("--notice-interval", type=int, default=300)
    parser.add_argument("--quota-db-url", default=os.environ.get("AIPOWER_QUOTA_DB_URL", ""))
    parser.add_argument("--hub-db-url", default=os.environ.get("AIPOWER_HUB_DB_URL", ""))
    return parser.parse_args(argv)


def prepare(args) -> dict[str, str]:
    """State folder, secrets, database and demo data; returns the hub's environment."""
    state = Path(args.state).resolve()
    (state / "homes").mkdir(parents=True, exist_ok=True)
    quota_db_url = args.quota_db_url or f"sqlite:///{state / 'quota.sqlite'}"
    engine = database.make_engine(quota_db_url)
    database.upgrade(engine)
    with database.transaction(database.make_session_factory(engine)) as db:
        seed_demo(db, now=utcnow())
    engine.dispose()
    oidc = f"http://127.0.0.1:{args.oidc_port}"
    env = dict(os.environ)
    env.update(
        {
            "AIPOWER_STATE_DIR": str(state),
            "AIPOWER_HUB_BIND_URL": f"http://127.0.0.1:{args.port}",
            "AIPOWER_HUB_INTERNAL_PORT": str(args.hub_port),
            "AIPOWER_PROXY_API_PORT": str(args.proxy_api_port),
            "AIPOWER_QUOTA_PORT": str(args.quota_port),
            "AIPOWER_QUOTA_DB_URL": quota_db_url,
            "AIPOWER_METERING_INTERVAL": str(args.metering_interval),
            "AIPOWER_NOTICE_INTERVAL": str(args.notice_interval),
            "AIPOWER_SMTP_HOST": "127.0.0.1",
            "AIPOWER_SMTP_PORT": str(args.smtp_port),
            "AIPOWER_OIDC_AUTHORIZE_URL": f"{oidc}/oauth2/authorize",
            "AIPOWER_OIDC_TOKEN_URL": f"{oidc}/oauth2/token",
            "AIPOWER_OIDC_USERINFO_URL": f"{oidc}/userinfo",
            "AIPOWER_OIDC_USERNAME_CLAIM": "sub",
            "AIPOWER_OIDC_CLIENT_SECRET": secret_file(
                state / "oidc_client_secret", lambda: secrets.token_hex(16)
            ),
            "AIPOWER_HUB_AGENT_TOKEN": secret_file(
                state / "hub_agent_token", lambda: secrets.token_hex(32)
            ),
            "JUPYTERHUB_CRYPT_KEY": secret_file(state / "crypt_key", lambda: secrets.token_hex(32)),
            "AIPOWER_QUOTA_COOKIE_SECRET": secret_file(
                state / "quota_cookie_secret", lambda: secrets.token_hex(32)
            ),
            "PYTHONPATH": str(HERE.parent),
        }
    )
    if args.hub_db_url:
        env["AIPOWER_HUB_DB_URL"] = args.hub_db_url
    return env


def oidc_command(port: int) -> list[str]:
    claims = [
        json.dumps({"sub": name, "name": display, "email": email}, ensure_ascii=False)
        for name, (display, email) in DEMO_ACCOUNTS.items()
    ]
    command = [sys.executable, "-m", "oidc_provider_mock", "-p", str(port)]
    for claim in claims:
        command += ["--user-claims", claim]
    return command


BANNER = """
================================================================================
 aipower-hub (embedded default) · http://127.0.0.1:{port}/
 Sign in with the button, then type (or click) one of these accounts:
   operator   營運管理員: hub admin panel + /services/quota/admin
   reviewer   審查委員: reviewers group
   trainee    受訓學員: 示範智能股份有限公司, approved L1 (1000 points), may start GPU servers
   applicant  申請人: 新創應用有限公司, application pending: cannot start servers
 GPUs: real ones if nvidia-smi / amd-smi / rocm-smi find any, else SIMULATED (4 NVIDIA, 4 AMD)
 State: {state} (e-mail notices land in its mail/ folder, a Maildir)
================================================================================
"""


def mail_catcher_command(port: int, maildir: Path) -> list[str]:
    """A real SMTP server that files every notice in a Maildir instead of sending it on."""
    return [
        sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}",
        "-c", "aiosmtpd.handlers.Mailbox", str(maildir),
    ]  # fmt: skip


def main(argv=None) -> int:
    args = parse_args(argv)
    env = prepare(args)
    maildir = Path(env["AIPOWER_STATE_DIR"]) / "mail"
    helpers = [
        subprocess.Popen(oidc_command(args.oidc_port), env=env),
        subprocess.Popen(mail_catcher_command(args.smtp_port, maildir), env=env),
    ]
    hub = None
    try:
        wait_for_port(args.oidc_port)
        wait_for_port(args.smtp_port)
        print(BANNER.format(port=args.port, state=env["AIPOWER_STATE_DIR"]), flush=True)
        # the hub leads a process group of its own: the proxy and the quota service are in
        # it; single-user servers start sessions of their own and outlive a hub restart
        hub = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(HERE / "jupyterhub_config.py")],
            env=env,
            cwd=env["AIPOWER_STATE_DIR"],
            start_new_session=True,
        )

        def forward(signum, _frame):
            hub.send_signal(signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        return hub.wait()
    finally:
        if hub is not None and hub.poll() is None:
            hub.terminate()
            hub.wait(30)
        if hub is not None:
            # a hub that died without cleaning up (kill -9) leaves its proxy and services
            # behind: end them, so that the next start finds the ports free
            with contextlib.suppress(ProcessLookupError):
                os.killpg(hub.pid, signal.SIGTERM)
        for helper in helpers:
            helper.terminate()
            helper.wait(10)


if __name__ == "__main__":
    sys.exit(main())
