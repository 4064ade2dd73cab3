"""Inside JupyterLab the trainee sees the project's balance and burn rate (issue 4): the
status-bar item in a real browser (Debian's Chromium driven by Playwright), against the real
stack, compared with what the quota service's API says."""

from __future__ import annotations

import re
import shutil

import pytest
from playwright.sync_api import expect, sync_playwright

from spawner.notebook.usage import hours_left, millipoints
from tests.platform import QuotaDB
from tests.stack import Stack
from tests.test_browser import CHROMIUM, CHROMIUM_FLAGS, sign_in

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    state = tmp_path_factory.mktemp("lab-status-stack")
    # metering passes an hour apart: nothing is charged while the test runs, so the balance
    # holds still and the status bar and the API can be compared digit for digit
    platform = Stack(state, metering_interval=3600).start()
    platform.quota_db_url = f"sqlite:///{state / 'quota.sqlite'}"
    yield platform
    platform.stop()


@pytest.fixture(scope="module")
def quota_db(stack):
    db = QuotaDB(stack.quota_db_url)
    yield db
    db.close()


@pytest.fixture(scope="module")
def chromium():
    if not shutil.which(CHROMIUM):
        pytest.fail("Chromium is missing: apt-get install -y chromium (.ci/run does it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


def the_project(api, stack: Stack) -> dict:
    response = api.get(stack.url("/services/quota/api/v1/projects"), timeout=30)
    assert response.status_code == 200, response.text
    projects = response.json()
    assert len(projects) == 1, projects
    return projects[0]


def test_the_status_bar_shows_the_balance_and_burn_rate_the_api_gives(
    stack, quota_db, chromium, tmp_path
):
    trainee = stack.sign_in("trainee")
    api = stack.api(stack.token_for(trainee, "trainee"))

    page = chromium.new_page()
    sign_in(page, stack, "trainee")
    page.locator("#start").click()
    page.wait_for_url("**/hub/spawn**")
    page.locator("#gpu-vendor-nvidia").check()
    page.locator("#gpu-count").select_option("2")
    page.locator("#spawn_form button[type=submit]").click()
    page.wait_for_url("**/user/trainee/lab**", timeout=90_000)
    expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=60_000)

    project = the_project(api, stack)
    assert [s["gpu_count"] for s in project["running_servers"]] == [2]
    assert project["burn_rate_points_per_hour"] == "4"  # 2 GPUs × 2 points an hour
    item = page.locator("#aipower-usage")
    expect(item).to_have_text(f"點數 Points {project['balance_points']} · 4/h", timeout=30_000)
    hours = hours_left(project["balance_points"], "4")
    title = item.get_attribute("title")
    assert project["name"] in title
    zh = title.index(f"以此速率約可再用 {hours} 小時")
    en = title.index(f"about {hours} hours at this rate")
    assert zh < en  # Traditional Chinese first, then English

    # the balance moves (here: an adjustment straight into the ledger); after a reload the
    # status bar shows the new figure, the same as the API
    project_id = project["id"]
    quota_db.adjust(project_id, 996_667 - millipoints(project["balance_points"]))
    assert the_project(api, stack)["balance_points"] == "996.667"
    page.reload()
    expect(item).to_have_text("點數 Points 996.667 · 4/h", timeout=60_000)
    expect(item).to_have_attribute("title", re.compile(r"約可再用 249\.166 小時"))
    page.screenshot(path=str(tmp_path / "lab-status.png"))

    # the endpoint behind it, with the browser's own cookies
    usage = page.request.get(stack.url("/user/trainee/aipower/usage"))
    assert usage.status == 200
    assert usage.json() == {
        "project": {"id": project_id, "name": project["name"]},
        "balance_points": "996.667",
        "burn_rate_points_per_hour": "4",
        "window_end": project["window_end"],
        "hours_left_at_current_rate": "249.166",
    }

    # nobody else reads it: another signed-in person is refused by the hub's OAuth on the
    # way into trainee's server, and the endpoint itself then refuses them too
    reviewer = stack.sign_in("reviewer")
    door = reviewer.get(stack.url("/user/trainee/lab"), timeout=30)
    assert door.status_code == 403 and "/hub/api/oauth2/authorize" in door.url, door.url
    other = reviewer.get(stack.url("/user/trainee/aipower/usage"), timeout=30)
    assert other.status_code == 403, (other.status_code, other.text[:300])
    assert "996.667" not in other.text

    page.goto(stack.url("/hub/home"))
    page.locator("#stop").click()
    expect(page.locator("#stop")).to_be_hidden(timeout=60_000)
    page.close()
