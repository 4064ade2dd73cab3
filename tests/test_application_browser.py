"""The applicant's pages in a real browser (Debian's Chromium driven by Playwright) against the
real stack: a training application started, filled in, refused at a field, given a file and
submitted; the form without JavaScript, in both languages, and a withdrawal."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests import test_browser
from tests.stack import Stack
from tests.test_application_pages import documents, flatten
from tests.test_closing import PDF

pytestmark = pytest.mark.e2e
chromium = test_browser.chromium  # the same browser fixture
sign_in = test_browser.sign_in


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    platform = Stack(tmp_path_factory.mktemp("apply-browser"), metering_interval=30).start()
    yield platform
    platform.stop()


def fill_in(page, values: dict) -> None:
    """Type, tick and choose as a person would, control by control (by name)."""
    for name, value in values.items():
        controls = page.locator(f'#application-form [name="{name}"]')
        kind = controls.first.evaluate("e => e.type")
        if kind == "checkbox" and isinstance(value, list):  # a group of boxes
            for box in controls.all():
                box.set_checked(box.get_attribute("value") in value)
        elif kind == "checkbox":
            controls.set_checked(value is True)
        elif kind == "select-one":
            controls.select_option(value)
        else:
            controls.fill("\n".join(value) if isinstance(value, list) else str(value))


def test_applicant_fills_in_and_submits_a_training_application(stack, chromium, tmp_path):
    page = chromium.new_page()
    sign_in(page, stack, "newco")
    page.goto(stack.url("/services/quota/"))
    page.get_by_role("navigation", name="平台").get_by_role("link", name="申請").click()
    expect(page.locator("h1")).to_have_text("我的申請案")
    expect(page.locator("#applications")).to_contain_text("你還沒有申請案。")
    page.get_by_label(re.compile(r"示範梯次.*模型訓練類.*受理至")).check()
    page.get_by_role("button", name="開始申請").click()
    page.wait_for_url(re.compile(r".*/applications/\d+$"))
    expect(page.locator("#status")).to_have_text("草稿")

    values = flatten(documents("10000063"))
    fill_in(page, values | {"company.business_number": "12345678"})
    page.get_by_label("落地場域雙方合作備忘錄（上傳檔案）").set_input_files(
        {"name": "合作備忘錄.pdf", "mimeType": "application/pdf", "buffer": PDF}
    )
    page.get_by_role("button", name="送出", exact=True).click()

    summary = page.locator("#error-summary")
    expect(summary).to_be_visible()
    expect(summary.get_by_role("link")).to_have_text(
        ["企業基本資料 · 統一編號: 統一編號檢查碼不符"]
    )
    field = page.get_by_label("統一編號")
    expect(field).to_have_value("12345678")
    expect(field).to_have_attribute("aria-invalid", "true")
    expect(field).to_have_accessible_description(re.compile("統一編號檢查碼不符"))
    expect(page.get_by_label("企業名稱")).to_have_value("新創應用有限公司")
    expect(page.get_by_label("J62 電腦程式設計、諮詢及相關服務業")).to_be_checked()
    expect(page.locator("#f-proposal-bonus-mou_file-current")).to_contain_text("合作備忘錄.pdf")
    page.screenshot(path=str(tmp_path / "errors.png"), full_page=True)

    field.fill("10000063")
    page.get_by_role("button", name="送出", exact=True).click()
    page.wait_for_url("**?submitted=1")
    expect(page.locator("#notice")).to_contain_text("申請案已送出")
    expect(page.locator("#status")).to_have_text("已送出")
    expect(page.locator("#history tbody tr")).to_have_count(1)
    expect(page.locator("#history tbody tr")).to_contain_text("草稿 → 已送出")
    expect(page.get_by_label("統一編號")).to_be_disabled()
    with page.expect_download() as download:
        page.get_by_role("link", name="合作備忘錄.pdf").click()
    assert download.value.suggested_filename == "合作備忘錄.pdf"
    assert open(download.value.path(), "rb").read() == PDF
    page.screenshot(path=str(tmp_path / "submitted.png"), full_page=True)
    page.close()


def test_the_form_works_without_javascript_in_both_languages(stack, chromium):
    context = chromium.new_context(java_script_enabled=False)
    page = context.new_page()
    sign_in(page, stack, "plain")
    page.goto(stack.url("/services/quota/applications"))
    page.get_by_label(re.compile(r"示範梯次.*模型推論類")).check()
    page.get_by_role("button", name="開始申請").click()
    expect(page.locator("h3#attachment-3")).to_have_text("附件 3：算力平台使用申請書（模型推論類）")
    page.get_by_label("企業名稱").fill("無腳本公司")
    page.get_by_label("統一編號").fill("12345678")
    page.get_by_label("醫療健康").check()
    page.get_by_role("button", name="儲存草稿").click()
    expect(page.locator("#notice")).to_have_text("草稿已儲存。")
    expect(page.get_by_label("統一編號")).to_have_value("12345678")
    expect(page.locator('[data-field="company.business_number"]')).to_have_text(
        "待補齊： 統一編號檢查碼不符"
    )

    page.get_by_role("link", name="English").click()
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.get_by_label("Unified business number")).to_have_value("12345678")
    expect(page.get_by_label("Company name")).to_have_value("無腳本公司")
    expect(page.get_by_label("Healthcare")).to_be_checked()
    expect(page.locator('[data-field="company.business_number"]')).to_have_text(
        "To complete: the business number's check digit is wrong"
    )
    expect(page.locator("h3#attachment-3")).to_have_text("Attachment 3: inference proposal")

    page.get_by_role("link", name="Withdraw the application").click()
    expect(page.locator("h1")).to_have_text("Withdraw the application")
    page.get_by_label("Reason (optional)").fill("wrong category")
    page.get_by_role("button", name="Yes, withdraw it").click()
    expect(page.locator("#notice")).to_have_text("The application was withdrawn.")
    expect(page.locator("#status")).to_have_text("Withdrawn")
    expect(page.locator("#history")).to_contain_text("wrong category")
    context.close()


def test_the_demo_applicant_finds_the_seeded_application(stack, chromium):
    page = chromium.new_page()
    sign_in(page, stack, "applicant")
    page.goto(stack.url("/services/quota/applications"))
    row = page.locator("#applications tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("示範梯次 Demo round（模型訓練類）")
    expect(row).to_contain_text("新創應用有限公司")
    expect(row.locator(".status")).to_have_text("已送出")
    row.get_by_role("link").click()
    expect(page.locator("#f-company-lead-email")).to_have_value("applicant@startup.example.tw")
    page.close()
