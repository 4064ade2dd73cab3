"""Field-level validation of applications: Attachment 1 (company data), the personal-data
consent, the declarations, and the proposal (Attachment 2, training; Attachment 3, inference).

Every check returns ``{field: message}``: the field is a dotted path into the application
(``company.lead.email``, ``proposal.dataset.video_resolution``), the message is bilingual,
Traditional Chinese first, then English. Validation never changes what was typed: it reads the
documents and reports; the service stores the documents as they came (a draft keeps even the
values that are wrong) and the parsers below give the exact values (``int`` and ``Decimal``,
never floats) where a number is needed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date
from decimal import Decimal, InvalidOperation
from urllib.parse import urlparse

INDUSTRY_CODES = ("J582", "J62", "J63", "K6699")
DOMAINS = (
    "healthcare",
    "disaster_prevention",
    "manufacturing",
    "retail",
    "finance",
    "public_welfare",
    "transport",
    "education",
    "other",
)
ENVIRONMENTS = ("A", "B", "C")  # A container, B No-Code training, C model validation (API)
REGISTRATION_KINDS = (
    "aml_payment",
    "e_signature",
    "data_economy",
    "ai_technical_service",
    "information_service",
    "information_security",
)
# the declarations of Attachment 1: eligibility items 1, 4, 5, 6 and 7 of the guideline (貳),
# and that what was filled in is true
DECLARATIONS = (
    "registered_in_taiwan",
    "not_branch_office",
    "not_china_invested",
    "no_major_breach",
    "no_serious_violation",
    "truthful",
)
EARLIEST_FOUNDING = date(1900, 1, 1)
SHORT, LONG = 200, 5000

Errors = dict[str, str]


def message(zh: str, en: str) -> str:
    return f"{zh} / {en}"


REQUIRED = message("此欄位必填", "this field is required")
TOO_LONG = "此欄位過長（最多 {n} 字） / too long (at most {n} characters)"
MUST_TICK = message("請勾選同意", "this box must be ticked")


# ---- single values ------------------------------------------------------------------------

_UBN_WEIGHTS = (1, 2, 1, 2, 1, 2, 4, 1)


def business_number_valid(value: str) -> bool:
    """The unified business number (統一編號) checksum: eight digits, each times its weight
    (1,2,1,2,1,2,4,1), the digits of every product summed; valid when the sum is divisible
    by 5, or, when the 7th digit is 7 (4 × 7 = 28, whose digits make 10, counted as 1 or 0),
    when the sum plus one is."""
    if not re.fullmatch(r"\d{8}", value or ""):
        return False
    total = 0
    for digit, weight in zip(value, _UBN_WEIGHTS, strict=True):
        product = int(digit) * weight
        total += product // 10 + product % 10
    return total % 5 == 0 or (value[6] == "7" and (total + 1) % 5 == 0)


def check_business_number(value) -> str | None:
    text = str(value or "").strip()
    if not text:
        return REQUIRED
    if not re.fullmatch(r"\d{8}", text):
        return message("統一編號應為 8 位數字", "the business number has 8 digits")
    if not business_number_valid(text):
        return message("統一編號檢查碼不符", "the business number's check digit is wrong")
    return None


def parse_date(value) -> date | None:
    """``YYYY-MM-DD`` (or ``YYYY/MM/DD``), a real calendar day; None otherwise."""
    text = str(value or "").strip()
    match = re.fullmatch(r"(\d{4})[-/](\d{1,2})[-/](\d{1,2})", text)
    if not match:
        return None
    try:
        return date(*(int(g) for g in match.groups()))
    except ValueError:
        return None


def check_date(value, *, today: date | None = None, not_before: date | None = None) -> str | None:
    if not str(value or "").strip():
        return REQUIRED
    day = parse_date(value)
    if day is None:
        return message("日期格式應為 YYYY-MM-DD", "a date is written YYYY-MM-DD")
    if not_before is not None and day < not_before:
        return message(f"日期不可早於 {not_before}", f"the date cannot be before {not_before}")
    if today is not None and day > today:
        return message("日期不可晚於今天", "the date cannot be in the future")
    return None


_EMAIL = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)


def check_email(value) -> str | None:
    text = str(value or "").strip()
    if not text:
        return REQUIRED
    if len(text) > 254 or not _EMAIL.fullmatch(text):
        return message("電子郵件格式不正確", "not a valid e-mail address")
    return None


_EXTENSION = re.compile(r"(?:#|分機|ext\.?|x)\s*(\d{1,6})$", re.IGNORECASE)


def normalize_phone(value) -> tuple[str, str] | None:
    """(digits, extension) of a Taiwanese number written with spaces, hyphens, brackets or
    +886; None when it is not one. Mobile 09xx-xxx-xxx (10 digits, no extension); landline
    with its area code (02-2345-6789, 04-2345-6789, 037-123456, 089-123456, 0826-12345):
    0, an area digit 2 to 8, 9 or 10 digits in all, with an optional extension."""
    text = str(value or "").strip()
    extension = ""
    match = _EXTENSION.search(text)
    if match:
        extension, text = match.group(1), text[: match.start()].strip()
    text = re.sub(r"[\s\-()]", "", text)
    if text.startswith("+886"):
        text = "0" + text[4:]
    if not text.isdigit():
        return None
    if re.fullmatch(r"09\d{8}", text):
        return None if extension else (text, "")
    if re.fullmatch(r"0[2-8]\d{7,8}", text):
        return text, extension
    return None


def check_phone(value, *, kind: str = "any") -> str | None:
    """``kind``: "mobile", "landline" or "any"."""
    if not str(value or "").strip():
        return REQUIRED
    parsed = normalize_phone(value)
    mobile = parsed is not None and parsed[0].startswith("09")
    if parsed is None or (kind == "mobile" and not mobile) or (kind == "landline" and mobile):
        zh, en = {
            "mobile": ("手機號碼應為 09xx-xxx-xxx", "a mobile number is written 09xx-xxx-xxx"),
            "landline": (
                "市話應含區碼，例如 02-2345-6789 或 02-2345-6789#123",
                "a landline has its area code, e.g. 02-2345-6789 or 02-2345-6789#123",
            ),
            "any": (
                "電話應為含區碼的市話（可加分機）或 09 開頭的手機號碼",
                "a phone number is a landline with its area code (extension optional) "
                "or a mobile number starting with 09",
            ),
        }[kind]
        return message(zh, en)
    return None


CODE_HOSTS = {"huggingface.co", "hf.co", "github.com"}


def check_url(value, *, hosts: set[str] | None = None) -> str | None:
    """An http(s) URL; with ``hosts``, on one of them (www. allowed) naming an owner and a
    repository (github.com/org/repo, huggingface.co/org/model, huggingface.co/datasets/org/x)."""
    text = str(value or "").strip()
    if not text:
        return REQUIRED
    url = urlparse(text)
    if url.scheme not in ("http", "https") or not url.hostname or " " in text:
        return message("網址格式不正確（應以 https:// 開頭）", "not a valid URL (https://...)")
    if hosts is not None:
        host = url.hostname.lower().removeprefix("www.")
        parts = [p for p in url.path.split("/") if p]
        if parts[:1] in (["datasets"], ["spaces"]) and host != "github.com":
            parts = parts[1:]
        if host not in hosts or len(parts) < 2:
            return message(
                "請填 Hugging Face 或 GitHub 的專案網址",
                "give a Hugging Face or GitHub repository URL",
            )
    return None


def parse_count(value) -> int | None:
    """A whole number ≥ 0, thousands separators allowed ("1,200,000")."""
    text = str(value if value is not None else "").strip().replace(",", "")
    if isinstance(value, bool) or not re.fullmatch(r"\d{1,18}", text):
        return None
    return int(text)


def parse_amount(value) -> Decimal | None:
    """An exact non-negative decimal (hours: "1,250.5"), never a float."""
    text = str(value if value is not None else "").strip().replace(",", "")
    if isinstance(value, bool | float) or not re.fullmatch(r"\d{1,12}(?:\.\d{1,3})?", text):
        return None
    try:
        return Decimal(text)
    except InvalidOperation:  # pragma: no cover - the pattern excludes it
        return None


def parse_resolution(value) -> tuple[int, int] | None:
    """``1920x1080`` (x, X, × or *), both sides 1..100000."""
    match = re.fullmatch(r"\s*(\d{1,6})\s*[xX×*]\s*(\d{1,6})\s*", str(value or ""))
    if not match:
        return None
    width, height = int(match.group(1)), int(match.group(2))
    return (width, height) if 0 < width <= 100_000 and 0 < height <= 100_000 else None


def check_count(value, *, required: bool = True, positive: bool = False) -> str | None:
    if not str(value if value is not None else "").strip():
        return REQUIRED if required else None
    number = parse_count(value)
    if number is None or (positive and number == 0):
        low = 1 if positive else 0
        return message(f"請填大於等於 {low} 的整數", f"a whole number of at least {low}")
    return None


def check_amount(value, *, required: bool = True) -> str | None:
    if not str(value if value is not None else "").strip():
        return REQUIRED if required else None
    if parse_amount(value) is None:
        return message(
            "請填大於等於 0 的數字（最多 3 位小數）", "a number of at least 0 (3 decimals at most)"
        )
    return None


def check_resolution(value, *, required: bool = True) -> str | None:
    if not str(value or "").strip():
        return REQUIRED if required else None
    if parse_resolution(value) is None:
        return message(
            "解析度應寫成 寬x高，例如 1920x1080", "a resolution is WIDTHxHEIGHT, e.g. 1920x1080"
        )
    return None


def check_text(value, *, required: bool = True, limit: int = SHORT) -> str | None:
    text = value if isinstance(value, str) else ("" if value is None else None)
    if text is None:
        return message("此欄位應為文字", "this field is text")
    if not text.strip():
        return REQUIRED if required else None
    if len(text) > limit:
        return TOO_LONG.format(n=limit)
    return None


def check_choices(value, allowed, *, at_least_one: bool = True) -> str | None:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        return message("請由清單中勾選", "tick from the list")
    unknown = [v for v in value if v not in allowed]
    if unknown:
        return message(f"不在清單中的選項：{', '.join(unknown)}", f"not in the list: {unknown}")
    if at_least_one and not value:
        return message("請至少勾選一項", "tick at least one")
    return None


def check_industry_codes(value) -> str | None:
    if not value:
        return message(
            "請至少勾選一項行業代碼：J582、J62、J63、K6699",
            "tick at least one industry code: J582, J62, J63, K6699",
        )
    return check_choices(value, INDUSTRY_CODES)


def ticked(value) -> bool:
    return value is True


# ---- documents ----------------------------------------------------------------------------


def _get(doc, path: str):
    for part in path.split("."):
        if not isinstance(doc, dict):
            return None
        doc = doc.get(part)
    return doc


def _run(errors: Errors, prefix: str, doc: dict, checks: dict[str, Callable]) -> None:
    for path, check in checks.items():
        problem = check(_get(doc, path))
        if problem:
            errors[f"{prefix}.{path}"] = problem


def _text(limit: int = SHORT, required: bool = True) -> Callable:
    return lambda v: check_text(v, required=required, limit=limit)


def validate_company(company: dict, *, today: date) -> Errors:
    """Attachment 1."""
    errors: Errors = {}
    _run(
        errors,
        "company",
        company or {},
        {
            "name": _text(),
            "business_number": check_business_number,
            "industry_codes": check_industry_codes,
            "founding_date": lambda v: check_date(v, today=today, not_before=EARLIEST_FOUNDING),
            "paid_in_capital": check_count,
            "representative": _text(),
            "employees": check_count,
            "address": _text(),
            "lead.name": _text(),
            "lead.title": _text(),
            "lead.phone": check_phone,
            "lead.email": check_email,
            "contact.name": _text(),
            "contact.title": _text(),
            "contact.office_phone": lambda v: check_phone(v, kind="landline"),
            "contact.mobile": lambda v: check_phone(v, kind="mobile"),
            "contact.email": check_email,
            "profile.business_items": _text(LONG),
            "profile.main_products": _text(LONG),
            "profile.sales_regions": _text(LONG),
        },
    )
    return errors


def validate_consent(consent: dict) -> Errors:
    if ticked((consent or {}).get("personal_data")):
        return {}
    return {
        "consent.personal_data": message(
            "請同意個人資料（姓名、電話、電子郵件、職稱）之蒐集",
            "consent to the collection of personal data (name, phone, e-mail, title)",
        )
    }


def validate_declarations(declarations: dict) -> Errors:
    return {
        f"declarations.{name}": MUST_TICK
        for name in DECLARATIONS
        if not ticked((declarations or {}).get(name))
    }


def _optional_url(hosts: set[str] | None = None) -> Callable:
    return lambda v: None if not str(v or "").strip() else check_url(v, hosts=hosts)


def _common_proposal(proposal: dict, errors: Errors, category: str) -> None:
    checks = {
        "title": _text(),
        "domains": lambda v: check_choices(v, DOMAINS),
        "importance": _text(LONG),
        "industry_application": _text(LONG),
        "benefit.application_count": check_count,
        "benefit.report_agreement": lambda v: None if ticked(v) else MUST_TICK,
        "benefit.demo_meeting": lambda v: None if ticked(v) else MUST_TICK,
        "bonus.mou_link": _optional_url(),
        "bonus.product_material_link": _optional_url(),
        "bonus.open_dataset_url": _optional_url(CODE_HOSTS),
        "productisation.target_customers": _text(LONG),
        "productisation.progress": _text(LONG),
        "productisation.product_form": _text(LONG),
        "productisation.pricing_unit": _text(),
        "other_needs": _text(LONG, required=False),
        "pledge": lambda v: None if ticked(v) else MUST_TICK,
    }
    if category == "training":
        checks["bonus.open_model_url"] = _optional_url(CODE_HOSTS)
        checks["benefit.model_count"] = check_count
    else:
        checks["bonus.open_code_url"] = _optional_url(CODE_HOSTS)
        checks["application_scenario"] = _text(LONG)
        checks["preset_models"] = _string_list
    _run(errors, "proposal", proposal, checks)
    if "other" in (_get(proposal, "domains") or []) and check_text(_get(proposal, "domain_other")):
        errors["proposal.domain_other"] = message("請說明其他領域", "name the other domain")
    registrations = _get(proposal, "bonus.registrations") or []
    if not isinstance(registrations, list):
        errors["proposal.bonus.registrations"] = message("格式不正確", "not a list")
        return
    for i, item in enumerate(registrations):
        item = item if isinstance(item, dict) else {}
        if item.get("kind") not in REGISTRATION_KINDS:
            errors[f"proposal.bonus.registrations.{i}.kind"] = message(
                "請選擇登錄類別", "choose the kind of registration"
            )
        if check_text(item.get("number"), limit=100):
            errors[f"proposal.bonus.registrations.{i}.number"] = message(
                "請填登錄字號", "give the registration number"
            )


def _string_list(value) -> str | None:
    if not isinstance(value, list) or not [v for v in value if isinstance(v, str) and v.strip()]:
        return message("請至少填一項", "give at least one")
    return None


def validate_training(proposal: dict) -> Errors:
    """Attachment 2."""
    proposal = proposal or {}
    errors: Errors = {}
    _common_proposal(proposal, errors, "training")
    environments = _get(proposal, "environments") or []
    problem = check_choices(environments, ENVIRONMENTS)
    if problem:
        errors["proposal.environments"] = problem
        environments = []
    if "A" in environments:
        _run(
            errors,
            "proposal",
            proposal,
            {
                "container.model_name": _text(),
                "container.version": _text(100),
                "container.download_link": check_url,
                "container.base_model": _text(required=False),
            },
        )
    if "B" in environments:
        _run(errors, "proposal", proposal, {"no_code_models": _string_list})
    if "C" in environments:
        _run(errors, "proposal", proposal, {"validation_models": _string_list})
    dataset = _get(proposal, "dataset") or {}
    _run(
        errors,
        "proposal",
        proposal,
        {
            "dataset.text_tokens": lambda v: check_count(v, required=False),
            "dataset.speech_hours": lambda v: check_amount(v, required=False),
            "dataset.video_hours": lambda v: check_amount(v, required=False),
            "dataset.image_count": lambda v: check_count(v, required=False),
            "dataset.description": _text(LONG),
            "dataset.open_datasets": _text(LONG, required=False),
        },
    )
    # a resolution belongs with its figure: video hours, image count
    for figure, resolution in (
        ("video_hours", "video_resolution"),
        ("image_count", "image_resolution"),
    ):
        has_figure = str(dataset.get(figure) or "").strip() not in ("", "0")
        problem = check_resolution(dataset.get(resolution), required=has_figure)
        if problem:
            errors[f"proposal.dataset.{resolution}"] = problem
    figures = ("text_tokens", "speech_hours", "video_hours", "image_count")
    if not any(str(dataset.get(f) or "").strip() for f in figures):
        errors["proposal.dataset"] = message(
            "請至少填一種資料量（文字 tokens、語音時數、影片時數或圖片張數）",
            "give at least one dataset figure (text tokens, speech hours, video hours or images)",
        )
    return errors


def validate_inference(proposal: dict) -> Errors:
    """Attachment 3."""
    errors: Errors = {}
    _common_proposal(proposal or {}, errors, "inference")
    return errors


def validate_application(
    *, category: str, company: dict, consent: dict, declarations: dict, proposal: dict, today: date
) -> Errors:
    """Every field of a whole application; empty when it may be submitted."""
    errors = validate_company(company, today=today)
    errors |= validate_consent(consent)
    errors |= validate_declarations(declarations)
    if category == "training":
        errors |= validate_training(proposal)
    elif category == "inference":
        errors |= validate_inference(proposal)
    else:
        errors["category"] = message("類別應為訓練或推論", "the category is training or inference")
    return errors
