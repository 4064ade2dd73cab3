"""The pages' languages: every message has its Traditional Chinese, the switch works without
JavaScript, and domain texts show the half of the page's language."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from babel.messages.extract import extract
from babel.messages.pofile import read_po
from jinja2.ext import babel_extract

from quota_service import i18n

PACKAGE = Path(i18n.__file__).parent
KEYWORDS = {"_": None, "gettext": None}


def used_messages() -> dict[str, set[str]]:
    """message id -> the files that use it, from the templates and the service's code."""
    used: dict[str, set[str]] = {}
    for template in sorted((PACKAGE / "templates").glob("*.html")):
        with template.open("rb") as f:
            for _line, _function, message, _comments in babel_extract(f, KEYWORDS, [], {}):
                used.setdefault(message, set()).add(template.name)
    for module in sorted(PACKAGE.glob("*.py")):
        with module.open("rb") as f:
            for _line, message, _comments, _context in extract("python", f, KEYWORDS):
                used.setdefault(message, set()).add(module.name)
    return used


def catalogue_ids() -> Counter:
    ids: Counter = Counter()
    for path in (i18n.CATALOGUE_DIR / "zh_TW" / "LC_MESSAGES").glob("*.po"):
        with path.open("rb") as f:
            ids.update(entry.id for entry in read_po(f) if entry.id)
    return ids


def test_every_message_on_a_page_has_its_traditional_chinese():
    translated = i18n.read_catalogues()["zh_TW"].messages
    missing = {m: sorted(files) for m, files in used_messages().items() if m not in translated}
    assert missing == {}


def test_no_translation_is_left_unused_or_given_twice():
    ids = catalogue_ids()
    assert set(ids) - set(used_messages()) == set()
    assert [m for m, n in ids.items() if n > 1] == []


def test_the_frame_is_translated_for_real():
    # the completeness tests above would pass on empty catalogues: check a known message
    zh, en = i18n.read_catalogues()["zh_TW"], i18n.read_catalogues()["en"]
    assert zh.gettext("My projects") == "我的計畫"
    assert en.gettext("My projects") == "My projects"
    assert zh.gettext("a text nobody translated") == "a text nobody translated"


@pytest.mark.parametrize(
    ("requested", "remembered", "chosen"),
    [
        (None, None, "zh_TW"),
        ("en", None, "en"),
        (None, "en", "en"),
        ("zh_TW", "en", "zh_TW"),
        ("fr", "en", "en"),  # an unknown language in the link falls back to the remembered one
        ("'><script>", None, "zh_TW"),
    ],
)
def test_language_choice(requested, remembered, chosen):
    assert i18n.choose_locale(requested, remembered) == chosen


def test_domain_texts_show_the_half_of_the_pages_language():
    text = "此欄位必填 / this field is required"
    translators = i18n.read_catalogues()
    assert translators["zh_TW"].bilingual(text) == "此欄位必填"
    assert translators["en"].bilingual(text) == "this field is required"
    # a path in an English half keeps its slashes; a text that is not bilingual stays whole
    assert translators["en"].bilingual("缺件 / missing: a/b") == "missing: a/b"
    assert translators["en"].bilingual("J582") == "J582"
