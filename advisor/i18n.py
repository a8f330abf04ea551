"""The user's language: English, or Japanese through the gettext catalog in assets/locale.

Messages are written in English in the code and looked up in
`assets/locale/<lang>/LC_MESSAGES/ptsa.mo`. `make catalogs` compiles it from the `ptsa.po`
beside it, and a test checks that the two agree. A message missing from the catalog is shown
in English.
"""

from __future__ import annotations

import ast
import gettext
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Any

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


# Packages whose messages the catalog holds: `_`, `t` and `N_` calls, and the first argument of
# every error class that derives from `TranslatableError` (found by reading the class statements).
MESSAGE_PACKAGES = ("advisor", "bench_engine", "db")
FUNCTION_KEYWORDS = ("_", "t", "N_")


def _source_root() -> Path:
    return Path(__file__).resolve().parents[1]


def source_files() -> list[Path]:
    """Return every Python file whose messages belong in the catalog."""
    root = _source_root()
    return sorted(path for package in MESSAGE_PACKAGES for path in (root / package).rglob("*.py"))


def error_classes(files: list[Path]) -> set[str]:
    """Names of the classes in `files` that derive, directly or not, from `TranslatableError`."""
    bases: dict[str, set[str]] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases[node.name] = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
    found = {"TranslatableError"}
    while True:
        more = {name for name, parents in bases.items() if parents & found} - found
        if not more:
            return found
        found |= more


def extract_messages() -> dict[str, list[str]]:
    """Return every catalog message in the sources, with the files (relative) it appears in."""
    from babel.messages.extract import extract_from_file

    files = source_files()
    keywords: dict[str, Any] = {name: None for name in FUNCTION_KEYWORDS}
    keywords.update({name: None for name in error_classes(files)})
    root = _source_root()
    messages: dict[str, list[str]] = {}
    for path in files:
        for _line, message, _comments, _context in extract_from_file("python", str(path), keywords=keywords):
            if isinstance(message, str) and message:
                messages.setdefault(message, []).append(str(path.relative_to(root)))
    return messages


def _catalog_path(lang: str) -> Path:
    return _source_root() / "assets" / "locale" / lang / "LC_MESSAGES" / f"{DOMAIN}.po"


def write_template(out: Path) -> int:
    """Write the English messages as a gettext template (.pot); return how many."""
    from babel.messages.catalog import Catalog
    from babel.messages.pofile import write_po

    catalog = Catalog(project="PTS Advisor", domain=DOMAIN)
    for message, files in extract_messages().items():
        catalog.add(message, locations=[(name, None) for name in files])
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as stream:
        write_po(stream, catalog, omit_header=False, include_lineno=False, width=100)
    return len(catalog)


def update_catalog(lang: str) -> tuple[int, int]:
    """Merge the current messages into `lang`'s .po: add new ones untranslated, drop unused ones.

    Returns (messages in the catalog, messages still untranslated).
    """
    from babel.messages.catalog import Catalog
    from babel.messages.pofile import read_po, write_po

    path = _catalog_path(lang)
    with path.open("rb") as stream:
        old = read_po(stream)
    translated = {m.id: m.string for m in old if m.id}
    catalog = Catalog(locale=lang, project="PTS Advisor", domain=DOMAIN)
    for message in extract_messages():
        catalog.add(message, translated.get(message, ""))
    with path.open("wb") as stream:
        write_po(stream, catalog, omit_header=False, include_lineno=False, no_location=True, width=100)
    missing = sum(1 for m in catalog if m.id and not m.string)
    return len(catalog), missing


def compile_catalogs() -> list[str]:
    """Compile every `ptsa.po` under assets/locale into the `ptsa.mo` beside it; return the paths written.

    Needs Babel (in the `test` extra). Babel's own `pybabel compile` refuses messages such as
    "80 % interval", which it reads as a %-format, although these messages use {} placeholders.
    """
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    written = []
    root = _source_root() / "assets" / "locale"
    for po in sorted(root.glob(f"*/LC_MESSAGES/{DOMAIN}.po")):
        with po.open("rb") as stream:
            catalog = read_po(stream)
        with po.with_suffix(".mo").open("wb") as stream:
            write_mo(stream, catalog)
        written.append(str(po.with_suffix(".mo")))
    return written


def main(argv: list[str]) -> int:
    """`python -m advisor.i18n [template|update|compile]` (compile by default); see the Makefile."""
    command = argv[0] if argv else "compile"
    if command == "template":
        out = _source_root() / "build" / f"{DOMAIN}.pot"
        print(f"wrote {write_template(out)} messages to {out}")
    elif command == "update":
        for lang in LANGUAGES[1:]:
            total, missing = update_catalog(lang)
            print(f"{_catalog_path(lang)}: {total} messages, {missing} without a translation")
    elif command == "compile":
        for path in compile_catalogs():
            print(f"wrote {path}")
    else:
        print("usage: python -m advisor.i18n [template|update|compile]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
