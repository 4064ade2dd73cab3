"""The pages' languages: Traditional Chinese by default, English on request.

Conventions (every page follows them):

- Templates write English source text through ``_()`` (code marks its page texts with a
  ``_()`` marker, as ``application_form`` does, and translates with ``translator.gettext``):
  ``{{ _("Save draft") }}``, or with values ``{{ _("{n} points left").format(n=points) }}``;
  a value with markup goes in through ``Markup.format`` (which escapes the rest), so that no
  message id carries markup: ``{{ (_("due by {when}") | e).format(when=strong_when) }}``.
  The text is the message id; Traditional Chinese comes from the catalogues, English is the id.
- Catalogues are gettext ``.po`` files under ``quota_service/locale/zh_TW/LC_MESSAGES/``, one
  file per area (``base.po``, ``applications.po``, ...) so that areas never edit one file.
  They are read when the service starts; tests/test_i18n.py fails when a message in a template
  or a ``_()`` call in code has no translation, or a translation is no longer used.
- Domain modules (validation, applications, ...) report bilingual text, ``"中文 / English"``
  (one text serves the API, the logs and mail); a page shows the half of its language through
  the ``bilingual`` filter: ``{{ errors[field] | bilingual }}``.
- The language is picked by ``?lang=`` (the switch in every page's header, a plain link, no
  JavaScript), remembered in a cookie, and otherwise Traditional Chinese.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from babel.messages.pofile import read_po

LOCALES = ("zh_TW", "en")
DEFAULT_LOCALE = "zh_TW"
HTML_LANG = {"zh_TW": "zh-Hant-TW", "en": "en"}
COOKIE = "aipower_lang"
CATALOGUE_DIR = Path(__file__).parent / "locale"
BILINGUAL_SEPARATOR = " / "


@dataclass(frozen=True)
class Translator:
    """The messages of one language; an id without a translation is shown as itself."""

    locale: str
    messages: dict[str, str] = field(default_factory=dict)

    def gettext(self, message: str) -> str:
        return self.messages.get(message) or message

    def bilingual(self, text: str) -> str:
        """The half of a ``"中文 / English"`` text in this language (the whole text when it is
        not bilingual)."""
        zh, separator, en = str(text).partition(BILINGUAL_SEPARATOR)
        if not separator:
            return str(text)
        return zh if self.locale == "zh_TW" else en

    @property
    def html_lang(self) -> str:
        return HTML_LANG[self.locale]


def read_catalogues(directory: Path = CATALOGUE_DIR) -> dict[str, Translator]:
    """Every language's messages, merged from all ``.po`` files of its folder."""
    translators = {}
    for locale in LOCALES:
        messages: dict[str, str] = {}
        for path in sorted((directory / locale / "LC_MESSAGES").glob("*.po")):
            with path.open("rb") as f:
                catalogue = read_po(f, locale=locale)
            for entry in catalogue:
                if entry.id and entry.string and not entry.fuzzy:
                    messages[entry.id] = entry.string
        translators[locale] = Translator(locale, messages)
    return translators


def choose_locale(requested: str | None, remembered: str | None) -> str:
    """The language of a page: the one asked for in the link, else the remembered one."""
    for candidate in (requested, remembered):
        if candidate in LOCALES:
            return candidate
    return DEFAULT_LOCALE
