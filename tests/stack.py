"""Start and drive the real platform (hub, proxy, OIDC provider, quota service) in tests."""

from __future__ import annotations

import email
import email.policy
import mailbox
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin

import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-20000:] if path.exists() else ""


def end_process(process: subprocess.Popen | None, log_file=None) -> None:
    """SIGTERM, then SIGKILL to its process group after 45 s; close its log file."""
    if process and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(45)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    if log_file is not None:
        log_file.close()


@dataclass
class Stack:
    """``python -m hub_config.demo`` on private ports and a private state folder."""

    state: Path
    quota_db_url: str = ""
    metering_interval: int = 2
    notice_interval: int = 2
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    def __post_init__(self):
        self.port, self.hub_port, self.proxy_api_port = free_port(), free_port(), free_port()
        self.quota_port, self.oidc_port, self.smtp_port = free_port(), free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = self.state / "stack.log"

    def start(self, timeout: float = 60) -> Stack:
        self.state.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable, "-m", "hub_config.demo", "--state", str(self.state),
            "--port", str(self.port), "--hub-port", str(self.hub_port),
            "--proxy-api-port", str(self.proxy_api_port), "--quota-port", str(self.quota_port),
            "--oidc-port", str(self.oidc_port), "--metering-interval", str(self.metering_interval),
            "--smtp-port", str(self.smtp_port), "--notice-interval", str(self.notice_interval),
        ]  # fmt: skip
        if self.quota_db_url:
            argv += ["--quota-db-url", self.quota_db_url]
        env = dict(os.environ, **self.extra_env)
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()  # leave nothing running behind a stack that did not come up
            raise
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the stack exited ({self.process.returncode}):\n{self.log()}")
            try:
                hub = requests.get(self.base + "/hub/health", timeout=2)
                quota = requests.get(self.base + "/services/quota/api/v1/openapi.yaml", timeout=2)
                if hub.status_code == 200 and quota.status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"the stack did not come up:\n{self.log()}")

    def log(self) -> str:
        return log_tail(self.log_path)

    def stop(self) -> None:
        end_process(self.process, getattr(self, "_log", None))

    # ---- a person in a browser-less session -------------------------------------------

    @staticmethod
    def client() -> requests.Session:
        """An HTTP client that reads pages as UTF-8, as browsers do from <meta charset>."""
        client = requests.Session()
        client.trust_env = False
        client.hooks["response"].append(
            lambda response, *a, **k: setattr(response, "encoding", "utf-8")
        )
        return client

    def sign_in(self, username: str) -> requests.Session:
        """The real OIDC flow over HTTP: the hub's login, the provider's form, the callback."""
        browser = self.client()
        page = browser.get(self.base + "/hub/oauth_login", timeout=30)
        assert page.status_code == 200 and 'name="sub"' in page.text, page.text[:500]
        done = browser.post(page.url, data={"sub": username}, timeout=60)
        assert done.status_code == 200, (done.status_code, done.text[:2000])
        assert browser.cookies.get("jupyterhub-session-id"), "no hub session after sign-in"
        return browser

    def hub_xsrf(self, browser: requests.Session) -> str:
        return next(c.value for c in browser.cookies if c.name == "_xsrf" and c.path == "/hub/")

    def token_for(self, browser: requests.Session, username: str) -> str:
        """A JupyterHub API token, created the way a person creates one on /hub/token."""
        response = browser.post(
            f"{self.base}/hub/api/users/{username}/tokens",
            json={"note": "test", "expires_in": 3600},
            headers={"X-XSRFToken": self.hub_xsrf(browser)},
            timeout=30,
        )
        assert response.status_code == 201, response.text
        return response.json()["token"]

    def api(self, token: str) -> requests.Session:
        client = self.client()
        client.headers["Authorization"] = f"token {token}"
        return client

    def mails(self) -> list:
        """The notices the stack's mail catcher received (a Maildir in the state folder),
        parsed with headers decoded."""
        folder = self.state / "mail"
        if not folder.exists():
            return []

        def parse(file):
            return email.message_from_binary_file(file, policy=email.policy.default)

        return list(mailbox.Maildir(folder, factory=parse, create=False))

    def url(self, path: str) -> str:
        return urljoin(self.base + "/", path.lstrip("/"))
