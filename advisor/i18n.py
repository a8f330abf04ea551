"""The user's language: English, or Japanese through the gettext catalog in assets/locale.

Messages are written in English in the code and looked up in
`assets/locale/<lang>/LC_MESSAGES/ptsa.mo`. `make catalogs` compiles it from the `ptsa.po`
beside it, and a test checks that the two agree. A message missing from the catalog is shown
in English.
"""

from __future__ import annotations

import gettext
import os
from importlib import resources

DOMAIN = "ptsa"
LANGUAGES = ("en", "ja")


def pick_language(option: str | None = None) -> str:
    """Return 'ja' or 'en': the option if given, else the locale (LC_ALL, LC_MESSAGES, LANG, as gettext reads them)."""
    if option is not None:
        if option not in LANGUAGES:
            raise ValueError(f"language {option!r} is not supported; use one of {', '.join(LANGUAGES)}.")
        return option
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = os.environ.get(name)
        if value:
            return "ja" if value.lower().startswith("ja") else "en"
    return "en"


_active: gettext.NullTranslations = gettext.NullTranslations()


def use_language(lang: str) -> None:
    """Make `_` translate into `lang` for the rest of the process (the TUI and the CLI set it once)."""
    global _active
    _active = translation(lang)


def _(message: str) -> str:
    """Return `message` in the language chosen with `use_language` (English by default)."""
    return _active.gettext(message)


def N_(message: str) -> str:
    """Mark a message for the catalog without translating it yet (for module-level tables)."""
    return message


def translation(lang: str) -> gettext.NullTranslations:
    """Return the catalog for `lang`; English (the messages as written) for 'en' or a missing catalog."""
    if lang == "en":
        return gettext.NullTranslations()
    with resources.as_file(resources.files("assets") / "locale") as folder:
        return gettext.translation(DOMAIN, localedir=str(folder), languages=[lang], fallback=True)


def compile_catalogs() -> list[str]:
    """Compile every `ptsa.po` under assets/locale into the `ptsa.mo` beside it; return the paths written.

    Needs Babel (in the `test` extra). Babel's own `pybabel compile` refuses messages such as
    "80 % interval", which it reads as a %-format, although these messages use {} placeholders.
    """
    from pathlib import Path

    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    written = []
    root = Path(str(resources.files("assets"))) / "locale"
    for po in sorted(root.glob(f"*/LC_MESSAGES/{DOMAIN}.po")):
        with po.open("rb") as stream:
            catalog = read_po(stream)
        with po.with_suffix(".mo").open("wb") as stream:
            write_mo(stream, catalog)
        written.append(str(po.with_suffix(".mo")))
    return written


if __name__ == "__main__":
    for path in compile_catalogs():
        print(f"wrote {path}")
