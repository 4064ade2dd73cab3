"""Field-level validation with real values: business numbers, codes, dates, e-mail addresses,
Taiwanese phone numbers, URLs and dataset figures."""

from __future__ import annotations

import copy
from datetime import date
from decimal import Decimal

import pytest

from quota_service import validation as v
from tests import application_samples as sample

TODAY = date(2026, 10, 1)


@pytest.mark.parametrize(
    "number",
    [
        "04595257",
        "22099131",  # TSMC
        "04541302",  # Hon Hai
        "22555003",  # President Chain Store
        "96979933",  # Chunghwa Telecom
        "23638777",  # ASUS: 7th digit 7, the plain sum (50) is divisible
        "10458575",  # 7th digit 7: sum 30
        "10458574",  # 7th digit 7: sum 29, valid only through the special case (29 + 1)
    ],
)
def test_valid_business_numbers(number):
    assert v.business_number_valid(number)
    assert v.check_business_number(number) is None


@pytest.mark.parametrize(
    "number",
    ["04595258", "22099132", "12345678", "10458573", "10458584", "00000001"],
)
def test_invalid_business_numbers(number):
    assert not v.business_number_valid(number)
    assert "檢查碼" in v.check_business_number(number)


def test_special_case_needs_a_seven_in_the_seventh_place():
    # 10458584: 8 * 4 = 32 → 5; 1+0+4+1+8+1+5+4 = 24, and 24 + 1 is divisible by 5
    products = [int(c) * w for c, w in zip("10458584", v._UBN_WEIGHTS, strict=True)]
    total = sum(p // 10 + p % 10 for p in products)
    assert total == 24 and (total + 1) % 5 == 0
    assert not v.business_number_valid("10458584")  # sum+1 divisible, but no 7 in place 7


@pytest.mark.parametrize("value", ["", "1234567", "123456789", "2209913a", "22 099 131"])
def test_business_number_shape(value):
    assert v.check_business_number(value) is not None


def test_industry_codes():
    assert v.check_industry_codes(["J62"]) is None
    assert v.check_industry_codes(["J582", "J62", "J63", "K6699"]) is None
    assert "J582" in v.check_industry_codes([])
    assert "J62" in v.check_industry_codes(None)
    assert "C2599" in v.check_industry_codes(["J62", "C2599"])


@pytest.mark.parametrize("value", ["2018-01-01", "2018/1/1", "2026-10-01", "1999-12-31"])
def test_good_dates(value):
    assert v.check_date(value, today=TODAY) is None


@pytest.mark.parametrize(
    "value,word",
    [("2026-02-30", "YYYY"), ("18-01-01", "YYYY"), ("2026-10-02", "future"), ("", "required")],
)
def test_bad_dates(value, word):
    assert word in v.check_date(value, today=TODAY)


@pytest.mark.parametrize(
    "value", ["lead@startup.example.tw", "a.b+tag@mail.moda.gov.tw", "x_y@example.com"]
)
def test_good_emails(value):
    assert v.check_email(value) is None


@pytest.mark.parametrize(
    "value", ["lead@", "lead.startup.tw", "a..b@example.tw", "a@b", "a b@example.tw", "@x.tw"]
)
def test_bad_emails(value):
    assert v.check_email(value) is not None


@pytest.mark.parametrize(
    "value,digits,ext",
    [
        ("02-2345-6789", "0223456789", ""),
        ("(02) 2345-6789", "0223456789", ""),
        ("02-2345-6789#123", "0223456789", "123"),
        ("02 2345 6789 分機 45", "0223456789", "45"),
        ("04-2345-6789 ext. 7", "0423456789", "7"),
        ("037-123456", "037123456", ""),
        ("089-123456", "089123456", ""),
        ("0826-12345", "082612345", ""),
        ("+886 2 2345 6789", "0223456789", ""),
        ("0912-345-678", "0912345678", ""),
        ("+886 912 345 678", "0912345678", ""),
    ],
)
def test_good_phones(value, digits, ext):
    assert v.normalize_phone(value) == (digits, ext)
    assert v.check_phone(value) is None


@pytest.mark.parametrize(
    "value",
    ["2345-6789", "0912-345-67", "0912-345-678#12", "01-2345-6789", "09-1234", "02-2345-67890"],
)
def test_bad_phones(value):
    assert v.check_phone(value) is not None


def test_phone_kinds():
    assert v.check_phone("0912-345-678", kind="mobile") is None
    assert "09xx" in v.check_phone("02-2345-6789", kind="mobile")
    assert v.check_phone("02-2345-6789#9", kind="landline") is None
    assert "區碼" in v.check_phone("0912-345-678", kind="landline")


def test_urls():
    assert v.check_url("https://startup.example.tw/product") is None
    assert v.check_url("ftp://example.tw/x") is not None
    assert v.check_url("example.tw") is not None
    code = v.CODE_HOSTS
    assert v.check_url("https://huggingface.co/datasets/startup/clinic-qa", hosts=code) is None
    assert v.check_url("https://huggingface.co/startup/clinic-llama", hosts=code) is None
    assert v.check_url("https://github.com/startup/clinic-bot", hosts=code) is None
    assert v.check_url("https://www.github.com/startup/clinic-bot", hosts=code) is None
    assert "GitHub" in v.check_url("https://gitlab.com/startup/clinic-bot", hosts=code)
    assert v.check_url("https://github.com/startup", hosts=code) is not None
    assert v.check_url("https://huggingface.co/datasets/startup", hosts=code) is not None


def test_dataset_figures_are_exact():
    assert v.parse_count("120,000,000") == 120_000_000
    assert v.parse_count("0") == 0
    assert v.parse_count("1.5") is None and v.parse_count("-3") is None
    assert v.parse_count(True) is None
    assert v.parse_amount("1,250.5") == Decimal("1250.5")
    assert v.parse_amount("0.001") == Decimal("0.001")
    assert v.parse_amount("0.0001") is None and v.parse_amount("1e3") is None
    assert v.parse_amount(0.1) is None  # floats are refused: they are not exact
    assert v.parse_resolution("1920x1080") == (1920, 1080)
    assert v.parse_resolution("3840 × 2160") == (3840, 2160)
    assert v.parse_resolution("1920x0") is None and v.parse_resolution("1920") is None


def test_a_complete_application_passes():
    for category, proposal in (("training", sample.training()), ("inference", sample.inference())):
        errors = v.validate_application(
            category=category,
            company=sample.company(),
            consent=sample.CONSENT,
            declarations=sample.DECLARATIONS,
            proposal=proposal,
            today=TODAY,
        )
        assert errors == {}, category


def test_field_level_messages_are_bilingual_and_input_is_kept():
    company = sample.company(
        business_number="22099132", industry_codes=[], founding_date="2019-13-01"
    )
    company["contact"]["mobile"] = "02-2345-6789"
    company["lead"]["email"] = "lead@"
    typed = copy.deepcopy(company)
    proposal = sample.training()
    proposal["dataset"]["image_resolution"] = "big"
    proposal["bonus"]["open_dataset_url"] = "https://example.tw/data"
    errors = v.validate_application(
        category="training",
        company=company,
        consent={"personal_data": False},
        declarations={**sample.DECLARATIONS, "not_china_invested": False},
        proposal=proposal,
        today=TODAY,
    )
    assert set(errors) == {
        "company.business_number",
        "company.industry_codes",
        "company.founding_date",
        "company.contact.mobile",
        "company.lead.email",
        "consent.personal_data",
        "declarations.not_china_invested",
        "proposal.dataset.image_resolution",
        "proposal.bonus.open_dataset_url",
    }
    for text in errors.values():
        zh, en = text.split(" / ", 1)
        assert any("\u4e00" <= c <= "\u9fff" for c in zh) and en.isascii()
    assert company == typed  # nothing typed is changed


def test_training_proposal_rules():
    errors = v.validate_training(
        sample.training(
            environments=["A", "C"],
            container={"model_name": "", "version": "1", "download_link": "nope"},
            dataset={"description": "x", "video_hours": "10"},
            domains=["other"],
        )
    )
    assert set(errors) == {
        "proposal.container.model_name",
        "proposal.container.download_link",
        "proposal.validation_models",
        "proposal.dataset.video_resolution",  # video hours given, resolution missing
        "proposal.domain_other",
    }
    none = v.validate_training(sample.training(dataset={"description": "x"}))
    assert "proposal.dataset" in none  # no figure at all
    bad = v.validate_training(sample.training(environments=["D"]))
    assert "proposal.environments" in bad


def test_inference_proposal_rules():
    errors = v.validate_inference(
        sample.inference(
            preset_models=[],
            bonus={"registrations": [{"kind": "mining", "number": ""}], "open_code_url": "x"},
            pledge=False,
        )
    )
    assert set(errors) == {
        "proposal.preset_models",
        "proposal.bonus.registrations.0.kind",
        "proposal.bonus.registrations.0.number",
        "proposal.bonus.open_code_url",
        "proposal.pledge",
    }
