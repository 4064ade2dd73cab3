"""Spawn latency: from sign-in to a ready server, aipower-hub against stock JupyterHub.

Not a test: a measurement. Each round signs one person in, creates an API token, starts
a server through the REST API, polls until the hub reports it ready, then stops it and
waits until it is gone (the stop is timed too, but is not part of the headline figure).

- ours: the real stack (``tests.stack.Stack``: OIDC provider, hub with AIPowerAuthenticator
  and LocalGPUSpawner, proxy, quota service) on free ports; ``trainee`` signs in through
  the OIDC provider's form and asks for ``{"gpu_vendor": "nvidia", "gpu_count": 1}``.
- stock: JupyterHub with DummyAuthenticator and SimpleLocalProcessSpawner, the same
  node proxy and the same single-user command, on free ports; ``trainee`` signs in with
  the hub's own login form.

The two alternate (ours, stock, ours, stock, ...) so that both see the same machine load.

    .venv/bin/python benchmarks/spawn_latency.py --rounds 5
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.stack import Stack, end_process, free_port, log_tail  # noqa: E402

USERNAME = "trainee"
USER_OPTIONS = {"gpu_vendor": "nvidia", "gpu_count": 1}
CHP = ROOT / ".local/node/node_modules/.bin/configurable-http-proxy"
SINGLEUSER = Path(sys.executable).with_name("jupyterhub-singleuser")
POLL = 0.1


@dataclass
class Round:
    sign_in: float  # sign-in and token creation
    spawn: float  # POST .../server until the hub says ready
    stop: float  # DELETE .../server until the server is gone

    @property
    def total(self) -> float:
        return self.sign_in + self.spawn


# ---- the two hubs -----------------------------------------------------------------------


class OursHub:
    label = "ours"

    def __init__(self, state: Path, metering_interval: int):
        self.stack = Stack(state, metering_interval=metering_interval)
        self.base = self.stack.base

    def start(self) -> None:
        self.stack.start(timeout=120)

    def stop(self) -> None:
        self.stack.stop()

    def log(self) -> str:
        return self.stack.log()

    def sign_in(self) -> requests.Session:
        return self.stack.sign_in(USERNAME)

    def token(self, browser: requests.Session) -> str:
        return self.stack.token_for(browser, USERNAME)


class StockHub:
    """JupyterHub as it comes: DummyAuthenticator, SimpleLocalProcessSpawner."""

    label = "stock"

    def __init__(self, state: Path):
        self.state = state
        self.port, self.hub_port, self.proxy_api_port = free_port(), free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = state / "stock.log"
        self.process: subprocess.Popen | None = None

    def config(self) -> str:
        args = ["--ServerApp.allow_root=True"] if os.geteuid() == 0 else []
        return textwrap.dedent(
            f"""\
            c = get_config()  # noqa
            c.JupyterHub.authenticator_class = "dummy"
            c.JupyterHub.spawner_class = "simple"
            c.JupyterHub.bind_url = {self.base!r}
            c.JupyterHub.hub_ip = "127.0.0.1"
            c.JupyterHub.hub_port = {self.hub_port}
            c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.proxy_api_port}"
            c.ConfigurableHTTPProxy.command = [{str(CHP)!r}]
            c.ConfigurableHTTPProxy.pid_file = {str(self.state / "proxy.pid")!r}
            c.JupyterHub.db_url = "sqlite:///{self.state / "jupyterhub.sqlite"}"
            c.JupyterHub.cookie_secret_file = {str(self.state / "jupyterhub_cookie_secret")!r}
            c.JupyterHub.pid_file = {str(self.state / "jupyterhub.pid")!r}
            c.SimpleLocalProcessSpawner.home_dir_template = {str(self.state / "homes/{username}")!r}
            c.Spawner.cmd = [{str(SINGLEUSER)!r}]
            c.Spawner.args = {args!r}
            c.Spawner.default_url = "/lab"
            c.Spawner.http_timeout = 60
            """
        )

    def start(self, timeout: float = 120) -> None:
        (self.state / "homes").mkdir(parents=True, exist_ok=True)
        config = self.state / "jupyterhub_config.py"
        config.write_text(self.config())
        self._log = open(self.log_path, "ab")  # closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(config)],
            cwd=self.state,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"stock hub exited ({self.process.returncode}):\n{self.log()}")
            try:
                if requests.get(self.base + "/hub/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"stock hub did not come up:\n{self.log()}")

    def stop(self) -> None:
        end_process(self.process, getattr(self, "_log", None))

    def log(self) -> str:
        return log_tail(self.log_path)

    def xsrf(self, browser: requests.Session) -> str:
        return next(c.value for c in browser.cookies if c.name == "_xsrf" and c.path == "/hub/")

    def sign_in(self) -> requests.Session:
        browser = requests.Session()
        browser.trust_env = False
        page = browser.get(self.base + "/hub/login", timeout=30)
        assert page.status_code == 200, page.text[:500]
        # next=/hub/home: the default landing page, /hub/spawn, would start the server at
        # once (stock JupyterHub has no options form); ours lands on its spawn form
        done = browser.post(
            self.base + "/hub/login?next=%2Fhub%2Fhome",
            data={"username": USERNAME, "password": "x", "_xsrf": self.xsrf(browser)},
            timeout=60,
        )
        assert done.status_code == 200, (done.status_code, done.text[:2000])
        assert browser.cookies.get("jupyterhub-session-id"), "no hub session after sign-in"
        return browser

    def token(self, browser: requests.Session) -> str:
        response = browser.post(
            f"{self.base}/hub/api/users/{USERNAME}/tokens",
            json={"note": "bench", "expires_in": 3600},
            headers={"X-XSRFToken": self.xsrf(browser)},
            timeout=30,
        )
        assert response.status_code == 201, response.text
        return response.json()["token"]


# ---- one round ----------------------------------------------------------------------------


def server_of(api: requests.Session, base: str) -> dict | None:
    response = api.get(f"{base}/hub/api/users/{USERNAME}", timeout=30)
    response.raise_for_status()
    return response.json().get("servers", {}).get("")


def one_round(hub, timeout: float) -> Round:
    t0 = time.perf_counter()
    browser = hub.sign_in()
    token = hub.token(browser)
    t1 = time.perf_counter()
    api = requests.Session()
    api.trust_env = False
    api.headers["Authorization"] = f"token {token}"
    started = api.post(f"{hub.base}/hub/api/users/{USERNAME}/server", json=USER_OPTIONS, timeout=60)
    if started.status_code not in (201, 202):
        raise RuntimeError(f"{hub.label}: start refused {started.status_code}: {started.text}")
    deadline = time.monotonic() + timeout
    while not (server_of(api, hub.base) or {}).get("ready"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{hub.label}: server not ready in {timeout}s:\n{hub.log()}")
        time.sleep(POLL)
    t2 = time.perf_counter()
    stopped = api.delete(f"{hub.base}/hub/api/users/{USERNAME}/server", timeout=60)
    if stopped.status_code not in (202, 204):
        raise RuntimeError(f"{hub.label}: stop refused {stopped.status_code}: {stopped.text}")
    deadline = time.monotonic() + timeout
    while server_of(api, hub.base) is not None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{hub.label}: server not gone in {timeout}s:\n{hub.log()}")
        time.sleep(POLL)
    t3 = time.perf_counter()
    return Round(sign_in=t1 - t0, spawn=t2 - t1, stop=t3 - t2)


# ---- figures --------------------------------------------------------------------------------


def p90(values: list[float]) -> float:
    """Nearest-rank 90th percentile (with 5 rounds: the largest)."""
    ordered = sorted(values)
    rank = max(1, -(-9 * len(ordered) // 10))
    return ordered[rank - 1]


def report(rounds: dict[str, list[Round]]) -> str:
    ours, stock = rounds["ours"], rounds["stock"]
    lines = [
        "round  ours total  (sign-in + spawn)   ours stop  stock total  (sign-in + spawn)  stock stop"
    ]
    for i, (a, b) in enumerate(zip(ours, stock, strict=True), 1):
        lines.append(
            f"{i:>5}  {a.total:>10.2f}  ({a.sign_in:>6.2f} + {a.spawn:>6.2f})  {a.stop:>9.2f}"
            f"  {b.total:>11.2f}  ({b.sign_in:>6.2f} + {b.spawn:>6.2f})  {b.stop:>10.2f}"
        )
    lines.append("")
    lines.append(f"{'':<16}{'median':>8}{'p90':>8}{'min':>8}{'max':>8}")
    for label, series in (("ours", ours), ("stock", stock)):
        for part in ("total", "sign_in", "spawn", "stop"):
            values = [getattr(r, part) for r in series]
            lines.append(
                f"{label + ' ' + part:<16}{statistics.median(values):>8.2f}{p90(values):>8.2f}"
                f"{min(values):>8.2f}{max(values):>8.2f}"
            )
    median_ours = statistics.median(r.total for r in ours)
    median_stock = statistics.median(r.total for r in stock)
    lines.append("")
    lines.append(
        f"ratio ours/stock of the median totals: {median_ours / median_stock:.2f}"
        f" ({median_ours:.2f} s / {median_stock:.2f} s)"
    )
    spawn_ratio = statistics.median(r.spawn for r in ours) / statistics.median(
        r.spawn for r in stock
    )
    lines.append(f"ratio ours/stock of the median spawns: {spawn_ratio:.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per hub")
    parser.add_argument(
        "--warmup", type=int, default=1, help="unmeasured rounds per hub before the measured ones"
    )
    parser.add_argument(
        "--metering-interval",
        type=int,
        default=60,
        help="metering interval of our quota service, seconds (the demo's default is 60)",
    )
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait per step")
    parser.add_argument("--keep", action="store_true", help="keep the temporary state folders")
    args = parser.parse_args(argv)
    if not CHP.exists():
        parser.error(f"no proxy at {CHP}: run `make test` or `make demo` once first")

    workdir = Path(tempfile.mkdtemp(prefix="aipower-bench-"))
    ours = OursHub(workdir / "ours", args.metering_interval)
    stock = StockHub(workdir / "stock")
    (workdir / "stock").mkdir()
    print(
        f"# {datetime.now(UTC).isoformat(timespec='seconds')} · {platform.node()} · "
        f"{os.cpu_count()} CPUs · Python {platform.python_version()} · state {workdir}"
        f" · load {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    rounds: dict[str, list[Round]] = {"ours": [], "stock": []}
    failed = True
    try:
        for hub in (ours, stock):
            t = time.perf_counter()
            hub.start()
            print(
                f"{hub.label} hub up in {time.perf_counter() - t:.1f} s on {hub.base}", flush=True
            )
        for i in range(args.warmup + args.rounds):
            for hub in (ours, stock):
                result = one_round(hub, args.timeout)
                kind = "warm-up" if i < args.warmup else f"round {i - args.warmup + 1}"
                print(
                    f"{kind:>8} {hub.label:<5} total {result.total:6.2f} s "
                    f"(sign-in {result.sign_in:.2f} + spawn {result.spawn:.2f}), "
                    f"stop {result.stop:.2f} s",
                    flush=True,
                )
                if i >= args.warmup:
                    rounds[hub.label].append(result)
        failed = False
    finally:
        for hub in (ours, stock):
            hub.stop()
        if failed or args.keep:
            print(f"state and logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"# load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    print(report(rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
