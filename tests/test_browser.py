"""Pages in a real browser (Debian's Chromium driven by Playwright) against the real stack."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.stack import Stack

pytestmark = pytest.mark.e2e
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
MODELS = Path(__file__).parent / "data" / "models"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    state = tmp_path_factory.mktemp("browser-stack")
    # the trainee keeps a Qwen2 model in their home: the storage scan has something to find
    shutil.copytree(MODELS / "qwen2-7b", state / "homes" / "trainee" / "models" / "qwen2-7b")
    platform = Stack(state, metering_interval=5).start()
    yield platform
    platform.stop()


@pytest.fixture(scope="module")
def chromium():
    if not shutil.which(CHROMIUM):
        pytest.fail("Chromium is missing: apt-get install -y chromium (.ci/run does it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


def sign_in(page, stack: Stack, username: str) -> None:
    page.goto(stack.url("/hub/login"))
    page.get_by_text("Sign in with 企業帳號 / Company account").click()
    page.locator('input[name="sub"]').fill(username)
    page.get_by_role("button", name="Authorize").first.click()
    page.wait_for_url("**/hub/home")


def test_trainee_starts_an_amd_server_from_the_form_and_sees_it_metered(stack, chromium, tmp_path):
    page = chromium.new_page()
    sign_in(page, stack, "trainee")
    expect(page.locator("#aipower-balance")).to_have_text("1000.000")
    page.locator("#start").click()
    page.wait_for_url("**/hub/spawn**")
    expect(page.locator("#spawn_form")).to_contain_text("模擬 simulated")
    page.locator("#gpu-vendor-amd").check()
    page.locator("#gpu-count").select_option("1")
    page.locator("#spawn_form button[type=submit]").click()
    page.wait_for_url("**/user/trainee/lab**", timeout=90_000)
    expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=60_000)

    page.goto(stack.url("/services/quota/"))
    page.get_by_role("link", name="示範智能 醫療影像模型訓練").click()
    servers = page.locator("table.servers")
    expect(servers).to_contain_text("AMD (ROCm)")
    expect(servers).to_contain_text("amd:0")
    expect(servers.locator(".badge")).to_have_text("模擬")
    expect(page.locator("#burn-rate")).to_contain_text("2 點/小時")
    page.screenshot(path=str(tmp_path / "project.png"), full_page=True)

    page.goto(stack.url("/hub/home"))
    page.locator("#stop").click()
    expect(page.locator("#stop")).to_be_hidden(timeout=60_000)
    page.close()


def test_applicant_sees_why_and_no_start_button(stack, chromium):
    page = chromium.new_page()
    sign_in(page, stack, "applicant")
    expect(page.locator("#aipower-refusal")).to_contain_text("申請案尚在審查中")
    expect(page.locator("#aipower-refusal")).to_contain_text("still under review")
    expect(page.locator("#start")).to_have_count(0)
    page.goto(stack.url("/services/quota/admin"))
    expect(page.locator("h1")).to_contain_text("403")
    page.close()


def test_operator_grants_points_and_a_bad_amount_keeps_what_was_typed(stack, chromium):
    page = chromium.new_page()
    sign_in(page, stack, "operator")
    page.goto(stack.url("/services/quota/admin"))
    section = page.locator("#project-1")
    section.locator('form[action$="/grant"] input[name="points"]').fill("12.3456")
    section.locator('form[action$="/grant"] input[name="reason"]').fill("補發 / top-up")
    section.locator('form[action$="/grant"] button').click()
    section = page.locator("#project-1")
    expect(section.locator('[data-field="points"]')).to_have_text("點數最多三位小數")
    expect(section.locator("#grant-points-1")).to_have_attribute("aria-invalid", "true")
    expect(section.locator('form[action$="/grant"] input[name="points"]')).to_have_value("12.3456")
    expect(section.locator('form[action$="/grant"] input[name="reason"]')).to_have_value(
        "補發 / top-up"
    )
    before = section.locator(".balance").inner_text()
    section.locator('form[action$="/grant"] input[name="points"]').fill("12.5")
    section.locator('form[action$="/grant"] button').click()
    after = page.locator("#project-1 .balance").inner_text()
    from decimal import Decimal

    assert Decimal(after) == Decimal(before) + Decimal("12.5")
    page.close()


def test_pages_are_in_traditional_chinese_and_switch_to_english_without_javascript(stack, chromium):
    context = chromium.new_context(java_script_enabled=False)
    page = context.new_page()
    # sign-in needs the provider's form only, which works without JavaScript
    sign_in(page, stack, "trainee")
    page.goto(stack.url("/services/quota/"))
    expect(page.locator("html")).to_have_attribute("lang", "zh-Hant-TW")
    nav = page.get_by_role("navigation", name="平台")
    expect(nav.get_by_role("link", name="我的計畫")).to_be_visible()
    # the hub's stylesheet (Bootstrap 5) is what styles the page
    assert page.evaluate("getComputedStyle(document.querySelector('nav')).display") == "flex"

    page.get_by_role("link", name="English").click()
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.get_by_role("navigation", name="Platform")).to_contain_text("My projects")
    expect(page.locator("h1")).to_have_text("My projects")
    expect(page.get_by_role("columnheader", name="Balance (points)")).to_be_visible()
    # remembered: the next page without ?lang= is English too, and the switch goes back
    page.goto(stack.url("/services/quota/"))
    expect(page.locator("html")).to_have_attribute("lang", "en")
    page.get_by_role("link", name="中文").click()
    expect(page.locator("html")).to_have_attribute("lang", "zh-Hant-TW")
    context.close()


def test_operator_reads_the_banned_model_scan_with_its_evidence(stack, chromium):
    page = chromium.new_page()
    sign_in(page, stack, "operator")
    page.goto(stack.url("/services/quota/admin"))
    page.get_by_role("link", name="禁用模型掃描").click()
    expect(page.locator("h1")).to_have_text("禁用模型掃描")
    row = page.locator('#model-scans tr[data-username="trainee"]')
    expect(row).to_contain_text("發現禁用模型")
    expect(row).to_contain_text("models/qwen2-7b/config.json")
    expect(row).to_contain_text("Qwen2ForCausalLM")
    expect(row).to_contain_text("示範智能股份有限公司")
    page.get_by_role("link", name="English").click()
    expect(page.locator('#model-scans tr[data-username="trainee"]')).to_contain_text(
        "Banned models found"
    )
    # not for the people it is about
    trainee = chromium.new_page()
    sign_in(trainee, stack, "trainee")
    trainee.goto(stack.url("/services/quota/admin/model-scans"))
    expect(trainee.locator("h1")).to_contain_text("403")
    page.close()
    trainee.close()


def test_the_scans_finding_becomes_a_violation_and_the_member_appeals_without_javascript(
    stack, chromium
):
    page = chromium.new_page()
    sign_in(page, stack, "operator")
    page.goto(stack.url("/services/quota/admin"))
    page.get_by_role("link", name="違規紀錄簿").click()
    form = page.locator("form", has=page.locator('input[name="source"][value="scans"]'))
    expect(form.locator("#scans")).to_contain_text("models/qwen2-7b/config.json")
    form.get_by_role("checkbox").first.check()
    form.get_by_label("違規情形").fill("   ")  # passes the browser's check, not the service's
    form.get_by_role("button", name="登錄為違規").click()
    form = page.locator("form", has=page.locator('input[name="source"][value="scans"]'))
    expect(form.locator('[data-field="summary"]')).to_contain_text("請說明違規情形")
    expect(form.get_by_role("checkbox").first).to_be_checked()  # what was ticked is kept
    form.get_by_label("違規情形").fill("以 Qwen2 模型訓練 / training on Qwen2")
    form.get_by_role("button", name="登錄為違規").click()
    expect(page.locator("#status")).to_have_text("已登錄 · 計入公司累計")
    expect(page.locator("#evidence")).to_contain_text("Qwen2ForCausalLM")
    page.close()

    # the member reads it in Chinese and appeals, without JavaScript
    context = chromium.new_context(java_script_enabled=False)
    trainee = context.new_page()
    sign_in(trainee, stack, "trainee")
    trainee.goto(stack.url("/services/quota/"))
    trainee.get_by_role("navigation", name="平台").get_by_role("link", name="違規紀錄").click()
    trainee.locator("#violations").get_by_role("link").first.click()
    expect(trainee.locator("#evidence")).to_contain_text("qwen2-7b")
    expect(trainee.locator("#sanction")).to_have_count(0)  # operators' forms are not there
    trainee.get_by_label("公司對這筆違規的申訴理由").fill("那是評估用的基準模型 / a benchmark only")
    trainee.get_by_role("button", name="提出申訴").click()
    expect(trainee.locator("#status")).to_have_text("申訴中")
    expect(trainee.locator("#history")).to_contain_text("那是評估用的基準模型")
    context.close()
