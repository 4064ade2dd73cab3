"""End to end: the real hub, node proxy, OIDC provider, quota service and single-user servers.

The GPUs are simulated (no GPU on these machines); everything else is the real thing.
The whole module runs once with the quota database on SQLite and once on PostgreSQL.
"""

from __future__ import annotations

import signal
import time
from datetime import timedelta

import jupyterhub
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from quota_service.models import UsageSession
from quota_service.timewindow import utcnow
from spawner.points import cumulative_millipoints, interval_cost
from tests.platform import QuotaDB, process_listening_on, wait_for
from tests.stack import Stack

pytestmark = pytest.mark.e2e
INTERVAL = 2
FAILURE_LIMIT = 2


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request, tmp_path_factory):
    state = tmp_path_factory.mktemp(f"stack-{request.param}")
    url = f"sqlite:///{state / 'quota.sqlite'}"
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_server").create_database(f"e2e_{int(time.time())}")
    platform = Stack(
        state,
        quota_db_url=url,
        metering_interval=INTERVAL,
        extra_env={
            "AIPOWER_CONSECUTIVE_FAILURE_LIMIT": str(FAILURE_LIMIT),
            "AIPOWER_AUTH_REFRESH_AGE": "2",
            "AIPOWER_QUOTA_TIMEOUT": "3",
            "AIPOWER_POLL_INTERVAL": "2",
        },
    )
    platform.quota_db_url = url
    platform.start()
    yield platform
    platform.stop()


@pytest.fixture(scope="module")
def quota_db(stack):
    db = QuotaDB(stack.quota_db_url)
    yield db
    db.close()


@pytest.fixture(scope="module")
def trainee(stack):
    browser = stack.sign_in("trainee")
    return browser, stack.api(stack.token_for(browser, "trainee"))


def server_model(api: requests.Session, stack: Stack, user: str, name: str = "") -> dict | None:
    return api.get(stack.url(f"/hub/api/users/{user}"), timeout=10).json()["servers"].get(name)


def start(api, stack, user, options, name=""):
    path = f"/hub/api/users/{user}/server" + (f"s/{name}" if name else "")
    return api.post(stack.url(path), json=options, timeout=60)


def wait_ready(api, stack, user, name=""):
    return wait_for(
        lambda: (server_model(api, stack, user, name) or {}).get("ready"),
        60,
        f"{user}'s server ready",
    )


def wait_gone(api, stack, user, name="", timeout=60):
    wait_for(lambda: server_model(api, stack, user, name) is None, timeout, f"{user}'s server gone")


def test_trainee_runs_a_two_gpu_nvidia_server_and_pays_for_it(stack, quota_db, trainee):
    browser, api = trainee
    home = browser.get(stack.url("/hub/home"), timeout=30)
    assert "aipower-balance" in home.text and 'id="start"' in home.text
    project_id = quota_db.project_of("trainee")
    before = quota_db.balance(project_id)

    form = browser.get(stack.url("/hub/spawn"), timeout=30).text
    assert 'name="gpu_vendor"' in form and "CUDA" in form and "ROCm" in form
    assert (
        "模擬 simulated" in form
        and '<option value="2">' in form
        and '<option value="3">' not in form
    )

    asked = time.monotonic()
    response = start(api, stack, "trainee", {"gpu_vendor": "nvidia", "gpu_count": 2})
    assert response.status_code in (201, 202), response.text
    wait_ready(api, stack, "trainee")
    projects = api.get(stack.url("/services/quota/api/v1/projects"), timeout=10).json()
    running = projects[0]["running_servers"]
    assert [(s["gpu_vendor"], s["gpu_count"], s["simulated"]) for s in running] == [
        ("nvidia", 2, True)
    ]
    assert len(running[0]["devices"]) == 2 and all(
        d.startswith("nvidia:") for d in running[0]["devices"]
    )
    assert projects[0]["burn_rate_points_per_hour"] == "4"

    time.sleep(2 * INTERVAL + 1)  # at least two whole intervals
    assert api.delete(stack.url("/hub/api/users/trainee/server"), timeout=60).status_code in (
        202,
        204,
    )
    wait_gone(api, stack, "trainee")
    elapsed = time.monotonic() - asked

    session = quota_db.sessions("trainee")[-1]
    assert session.stopped_at is not None and session.gpu_count == 2
    entries = quota_db.usage_entries(session.id)
    charged = -sum(e.amount_millipoints for e in entries)
    # the rounding rule (docs/points.md): the whole session costs the cumulative amount
    assert charged == cumulative_millipoints(2, session.charged_seconds)
    assert before - quota_db.balance(project_id) == charged
    # full intervals first, then the last partial one at the stop
    assert len(entries) >= 3
    assert [e.covers_to_seconds - e.covers_from_seconds for e in entries[:2]] == [
        INTERVAL,
        INTERVAL,
    ]
    # metered time is the server's time: inside what the test saw from the outside
    assert 2 * INTERVAL < session.charged_seconds <= elapsed + 1


def test_applicant_is_refused_on_the_page_and_through_the_api(stack, quota_db):
    browser = stack.sign_in("applicant")
    home = browser.get(stack.url("/hub/home"), timeout=30).text
    assert "申請案尚在審查中" in home and "still under review" in home
    assert 'id="start"' not in home
    sessions_before = quota_db.count(UsageSession)
    api = stack.api(stack.token_for(browser, "applicant"))
    response = start(api, stack, "applicant", {"gpu_vendor": "nvidia", "gpu_count": 1})
    assert response.status_code == 403
    assert server_model(api, stack, "applicant") is None
    assert quota_db.count(UsageSession) == sessions_before
    # the quota service's pages are open to them, and say the same
    overview = browser.get(stack.url("/services/quota/"), timeout=30)
    assert overview.status_code == 200 and "申請案尚在審查中" in overview.text


def test_unknown_person_signs_in_but_cannot_start(stack):
    browser = stack.sign_in("stranger")
    assert "尚未加入任何計畫" in browser.get(stack.url("/hub/home"), timeout=30).text
    api = stack.api(stack.token_for(browser, "stranger"))
    assert start(api, stack, "stranger", {"gpu_vendor": "amd", "gpu_count": 1}).status_code == 403
    assert api.get(stack.url("/services/quota/api/v1/projects"), timeout=10).json() == []


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"gpu_vendor": "nvidia", "gpu_count": 3}, "limit of 2"),
        ({"gpu_vendor": "intel", "gpu_count": 1}, "unknown GPU vendor"),
        ({"gpu_vendor": "amd", "gpu_count": 0}, "at least 1"),
        ({"gpu_vendor": "amd", "gpu_count": 1.5}, "must be an integer"),
        ({"gpu_vendor": "amd", "gpu_count": "1; rm -rf /"}, "must be an integer"),
        ({"gpu_vendor": "amd", "gpu_count": 1, "cmd": ["bash"]}, "unsupported option"),
    ],
)
def test_bad_or_tampered_user_options_are_refused_and_nothing_is_charged(
    stack, quota_db, trainee, options, words
):
    _, api = trainee
    sessions_before = quota_db.count(UsageSession)
    response = start(api, stack, "trainee", options)
    assert response.status_code == 400, response.text
    assert words in response.json()["message"]
    assert server_model(api, stack, "trainee") is None
    assert quota_db.count(UsageSession) == sessions_before


def test_refusals_do_not_count_toward_the_consecutive_failure_limit(stack, trainee):
    _, api = trainee
    for _ in range(FAILURE_LIMIT + 2):
        assert (
            start(api, stack, "trainee", {"gpu_vendor": "nvidia", "gpu_count": 9}).status_code
            == 400
        )
    time.sleep(3)  # the hub would exit 2 s after reaching the limit
    assert stack.process.poll() is None
    assert stack.client().get(stack.url("/hub/health"), timeout=5).status_code == 200


def refused_count(api, stack, reason: str) -> float:
    text = api.get(stack.url("/services/quota/metrics"), timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "aipower_spawns_refused_total" and sample.labels["reason"] == reason:
                return sample.value
    return 0.0


def test_metrics_show_balances_and_count_refusals_by_reason(stack, trainee):
    _, api = trainee
    assert api.get(stack.url("/services/quota/metrics"), timeout=10).status_code == 403
    operator = stack.sign_in("operator")
    metrics = stack.api(stack.token_for(operator, "operator"))  # admins hold read:metrics
    text = metrics.get(stack.url("/services/quota/metrics"), timeout=10).text
    assert 'aipower_project_balance_points{project_id="1",status="approved"}' in text
    before = refused_count(metrics, stack, "gpu_count")
    assert start(api, stack, "trainee", {"gpu_vendor": "nvidia", "gpu_count": 9}).status_code == 400
    wait_for(
        lambda: refused_count(metrics, stack, "gpu_count") == before + 1, 10, "the refusal counted"
    )


def test_more_gpus_than_are_free_is_refused(stack, quota_db):
    # the simulated inventory has 4 AMD devices; two 2-GPU servers take them all
    quota_db.add_project("busy", business_number="53212539", millipoints=100_000)
    browser = stack.sign_in("busy")
    api = stack.api(stack.token_for(browser, "busy"))
    for name in ("one", "two"):
        assert start(
            api, stack, "busy", {"gpu_vendor": "amd", "gpu_count": 2}, name
        ).status_code in (201, 202)
        wait_ready(api, stack, "busy", name)
    response = start(api, stack, "busy", {"gpu_vendor": "amd", "gpu_count": 1}, "three")
    assert response.status_code == 409 and "free" in response.json()["message"]
    for name in ("one", "two"):
        api.delete(stack.url(f"/hub/api/users/busy/servers/{name}"), timeout=60)
        wait_gone(api, stack, "busy", name)
    # the devices came back
    assert start(
        api, stack, "busy", {"gpu_vendor": "amd", "gpu_count": 2}, "three"
    ).status_code in (201, 202)
    wait_ready(api, stack, "busy", "three")
    api.delete(stack.url("/hub/api/users/busy/servers/three"), timeout=60)
    wait_gone(api, stack, "busy", "three")


def test_a_project_run_down_to_zero_has_its_server_stopped(stack, quota_db):
    # eight intervals of a 2-GPU server: enough for it to come up (a few seconds on a busy
    # 2-core machine), then it must be stopped within a pass of running out
    per_interval = interval_cost(2, INTERVAL)
    project_id = quota_db.add_project(
        "spender", business_number="12345675", millipoints=8 * per_interval
    )
    browser = stack.sign_in("spender")
    api = stack.api(stack.token_for(browser, "spender"))
    assert start(api, stack, "spender", {"gpu_vendor": "nvidia", "gpu_count": 2}).status_code in (
        201,
        202,
    )
    wait_ready(api, stack, "spender")
    wait_gone(api, stack, "spender", timeout=8 * INTERVAL + 30)
    session = quota_db.sessions("spender")[-1]
    assert "points cannot pay" in session.stop_reason
    balance = quota_db.balance(project_id)
    assert -per_interval <= balance < per_interval
    # the person is told why, on the hub's home page
    time.sleep(2.5)  # auth_refresh_age in this stack
    assert "點數不足" in browser.get(stack.url("/hub/home"), timeout=30).text
    # and a new start is refused: the balance cannot pay the first interval
    response = start(api, stack, "spender", {"gpu_vendor": "nvidia", "gpu_count": 2})
    assert response.status_code == 403 and "next metering interval" in response.json()["message"]


def test_a_low_balance_is_shown_on_the_home_page_and_mailed_once(stack, quota_db):
    # 1000 points awarded, 960 used: 40 left is 4 %, below the 5 % threshold
    project_id = quota_db.add_project("frugal", business_number="40028905", millipoints=1_000_000)
    quota_db.record_usage(project_id, 960_000)
    browser = stack.sign_in("frugal")
    home = browser.get(stack.url("/hub/home"), timeout=30).text
    assert 'id="aipower-warnings"' in home and "40.000" in home and "5%" in home
    [warning] = wait_for(
        lambda: [m for m in stack.mails() if m["To"] == "frugal@example.tw"],
        3 * INTERVAL + 10,
        "the low-balance e-mail",
    )
    assert "點數不足 5%" in warning["Subject"] and "points below 5%" in warning["Subject"]
    assert "40.000" in warning.get_content()
    time.sleep(2 * INTERVAL + 1)  # more notice runs: nothing is sent twice
    assert len([m for m in stack.mails() if m["To"] == "frugal@example.tw"]) == 1


def test_servers_stop_at_the_end_of_the_window_and_cannot_start_after_it(stack, quota_db):
    project_id = quota_db.add_project("closing", business_number="38602105", millipoints=100_000)
    browser = stack.sign_in("closing")
    api = stack.api(stack.token_for(browser, "closing"))
    assert start(api, stack, "closing", {"gpu_vendor": "nvidia", "gpu_count": 1}).status_code in (
        201,
        202,
    )
    wait_ready(api, stack, "closing")
    end = utcnow() + timedelta(seconds=3)
    quota_db.set_window_end(project_id, end)
    wait_gone(api, stack, "closing", timeout=30)
    session = quota_db.sessions("closing")[-1]
    assert "window has ended" in session.stop_reason
    # stopped by the first metering pass after the end, so within one interval of it
    assert end <= session.stopped_at <= end + timedelta(seconds=INTERVAL + 5)
    response = start(api, stack, "closing", {"gpu_vendor": "nvidia", "gpu_count": 1})
    assert response.status_code == 403


def test_suspension_stops_running_servers_and_later_spawns(stack, quota_db):
    quota_db.add_project("suspendee", business_number="24536806", millipoints=100_000)
    browser = stack.sign_in("suspendee")
    api = stack.api(stack.token_for(browser, "suspendee"))
    assert start(api, stack, "suspendee", {"gpu_vendor": "amd", "gpu_count": 1}).status_code in (
        201,
        202,
    )
    wait_ready(api, stack, "suspendee")

    operator = stack.sign_in("operator")
    admin = operator.get(stack.url("/services/quota/admin"), timeout=30)
    assert admin.status_code == 200 and "suspendee" in admin.text
    project_id = quota_db.project_of("suspendee")
    xsrf = next(
        c.value
        for c in operator.cookies
        if c.name == "_xsrf" and c.path.startswith("/services/quota")
    )
    action = stack.url(f"/services/quota/admin/projects/{project_id}/suspend")
    # without a reason: refused, nothing changed, what was typed is kept
    refused = operator.post(action, data={"_xsrf": xsrf, "reason": " "}, timeout=30)
    assert refused.status_code == 400 and "請填寫原因" in refused.text
    assert server_model(api, stack, "suspendee")["ready"]
    done = operator.post(
        action, data={"_xsrf": xsrf, "reason": "違規調查 / investigation"}, timeout=60
    )
    assert done.status_code == 200
    wait_gone(api, stack, "suspendee", timeout=30)
    time.sleep(2.5)  # auth_refresh_age: the group is gone, so the API refuses the start
    assert start(api, stack, "suspendee", {"gpu_vendor": "amd", "gpu_count": 1}).status_code == 403
    assert "停權" in browser.get(stack.url("/hub/home"), timeout=30).text


def test_trainee_cannot_act_for_others_or_as_the_hub(stack, trainee):
    browser, api = trainee
    # JupyterHub answers 404 for users a token may not see, so it does not reveal them
    other = start(api, stack, "applicant", {"gpu_vendor": "nvidia", "gpu_count": 1})
    assert other.status_code == 404
    internal = api.get(stack.url("/services/quota/api/v1/internal/access/trainee"), timeout=10)
    assert internal.status_code == 403
    assert browser.get(stack.url("/services/quota/admin"), timeout=30).status_code == 403
    no_token = stack.client().get(stack.url("/services/quota/api/v1/projects"), timeout=10)
    assert no_token.status_code == 401 and no_token.json()["reason"] == "error"


def test_malformed_and_replayed_oidc_callbacks_are_refused(stack):
    bogus = stack.client().get(stack.url("/hub/oauth_callback?code=bogus&state=bogus"), timeout=30)
    assert bogus.status_code == 400 and "Traceback" not in bogus.text
    assert stack.client().get(stack.url("/hub/oauth_callback"), timeout=30).status_code == 400

    browser = stack.client()
    page = browser.get(stack.url("/hub/oauth_login"), timeout=30)
    to_callback = browser.post(page.url, data={"sub": "trainee"}, allow_redirects=False, timeout=30)
    callback = to_callback.headers["Location"]
    assert "/hub/oauth_callback?" in callback
    assert browser.get(callback, timeout=60).status_code == 200  # signs in
    replay = browser.get(callback, timeout=60)  # the same code and state again
    assert replay.status_code == 400 and "Traceback" not in replay.text
    stolen = stack.client().get(callback, timeout=60)  # from another browser: no state cookie
    assert stolen.status_code == 400


def test_quota_service_down_fails_closed_and_recovers(stack, quota_db, trainee):
    _, api = trainee
    sessions_before = quota_db.count(UsageSession)
    process_listening_on(stack.quota_port).send_signal(signal.SIGKILL)
    response = start(api, stack, "trainee", {"gpu_vendor": "nvidia", "gpu_count": 1})
    assert response.status_code == 503, response.text
    assert "unavailable" in response.json()["message"]
    assert server_model(api, stack, "trainee") is None
    # the hub restarts its managed service; spawns work again
    wait_for(
        lambda: (
            stack.client()
            .get(stack.url("/services/quota/api/v1/openapi.yaml"), timeout=2)
            .status_code
            == 200
        ),
        60,
        "the quota service is back",
    )
    assert quota_db.count(UsageSession) == sessions_before
    assert start(api, stack, "trainee", {"gpu_vendor": "nvidia", "gpu_count": 1}).status_code in (
        201,
        202,
    )
    wait_ready(api, stack, "trainee")
    api.delete(stack.url("/hub/api/users/trainee/server"), timeout=60)
    wait_gone(api, stack, "trainee")


# keep last: it restarts the module's stack


def test_a_server_running_when_the_hub_stops_is_not_charged_for_the_downtime(stack, quota_db):
    project_id = quota_db.add_project("restarter", business_number="38602111", millipoints=100_000)
    browser = stack.sign_in("restarter")
    api = stack.api(stack.token_for(browser, "restarter"))
    assert start(api, stack, "restarter", {"gpu_vendor": "nvidia", "gpu_count": 1}).status_code in (
        201,
        202,
    )
    wait_ready(api, stack, "restarter")
    time.sleep(2 * INTERVAL + 1)  # seen running by at least one metering pass
    operator = stack.sign_in("operator")
    assert operator.get(stack.url("/services/quota/admin"), timeout=30).status_code == 200
    down_at = utcnow()
    # JupyterHub stops its services before the servers, so this stop cannot be reported
    stack.stop()
    time.sleep(4 * INTERVAL)
    stack.start()
    # the service's cookie secret is kept in the state folder: still signed in to its pages
    # (JupyterHub 5.5 itself drops the token inside the cookie at its restart; 6 keeps it)
    still = operator.get(stack.url("/services/quota/admin"), allow_redirects=False, timeout=30)
    assert still.status_code == (200 if jupyterhub.version_info >= (6,) else 302)
    session = wait_for(
        lambda: (s := quota_db.sessions("restarter")[-1]).stopped_at is not None and s,
        30,
        "the session is closed by reconciliation",
    )
    assert session.stopped_at <= down_at
    charged = 100_000 - quota_db.balance(project_id)
    assert charged == cumulative_millipoints(1, session.charged_seconds)
    # nothing for the downtime: at most the interval in which the server was last seen
    lived = (down_at - session.started_at).total_seconds()
    assert session.charged_seconds <= lived + INTERVAL + 1
