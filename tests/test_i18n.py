"""The Japanese catalog: complete, placeholders intact, and the shipped .mo compiled from the .po."""

from __future__ import annotations

import ast
import io
import string
from pathlib import Path

import pytest
from babel.messages.mofile import read_mo, write_mo
from babel.messages.pofile import read_po

from advisor.i18n import FUNCTION_KEYWORDS, error_classes, extract_messages, pick_language, source_files, translation
from db import TranslatableError

ROOT = Path(__file__).parents[1]
PO = ROOT / "assets" / "locale" / "ja" / "LC_MESSAGES" / "ptsa.po"


def catalog():
    with PO.open("rb") as stream:
        return read_po(stream)


def placeholders(text: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}


def test_every_message_translated():
    translated = {m.id: m.string for m in catalog() if m.id}
    missing = [(files[0], message) for message, files in extract_messages().items() if not translated.get(message)]
    assert not missing, f"no Japanese for {len(missing)} messages, first {missing[:3]}; run `make catalog-update` and translate"


def test_messages_are_literal_templates():
    """A message built at run time cannot be looked up in the catalog: no f-strings, and an error's
    message is a literal (`_(TABLE[key])` may translate a table entry marked with `N_`)."""
    files = source_files()
    errors = error_classes(files)
    bad = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            first = node.args[0]
            literal = isinstance(first, ast.Constant) and isinstance(first.value, str)
            if (name in FUNCTION_KEYWORDS and isinstance(first, ast.JoinedStr)) or (name in errors and not literal):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}(...)")
    assert not bad, "messages must be string literals with {fields} passed by keyword: " + ", ".join(bad[:10])


def test_error_messages_translate_with_their_fields():
    error = TranslatableError("sparsity {value} is out of range", value=1.5)
    assert str(error) == "sparsity 1.5 is out of range"
    japanese = {"sparsity {value} is out of range": "スパース率 {value} は範囲外です"}
    assert error.localized(lambda text: japanese.get(text, text)) == "スパース率 1.5 は範囲外です"
    broken = {"sparsity {value} is out of range": "スパース率 {valeur}"}  # a bad translation falls back
    assert error.localized(lambda text: broken.get(text, text)) == "sparsity 1.5 is out of range"


def test_translations_keep_the_placeholders():
    for message in catalog():
        if message.id:
            assert placeholders(message.string) == placeholders(message.id), message.id


def test_shipped_mo_matches_the_po():
    with (PO.with_suffix(".mo")).open("rb") as stream:
        shipped = {m.id: m.string for m in read_mo(stream) if m.id}
    buffer = io.BytesIO()
    write_mo(buffer, catalog())
    buffer.seek(0)
    fresh = {m.id: m.string for m in read_mo(buffer) if m.id}
    assert shipped == fresh, "ptsa.mo is older than ptsa.po; run `make catalogs`"


def test_japanese_lookup_and_english_fallback():
    assert translation("ja").gettext("Risks") == "リスク"
    assert translation("ja").gettext("a message nobody translated") == "a message nobody translated"
    assert translation("en").gettext("Risks") == "Risks"


@pytest.mark.parametrize(
    "env, option, expected",
    [
        ({"LANG": "ja_JP.UTF-8"}, None, "ja"),
        ({"LANG": "ja_JP.UTF-8", "LC_ALL": "C"}, None, "en"),  # LC_ALL wins, as in gettext
        ({"LC_MESSAGES": "ja_JP.UTF-8", "LANG": "en_US.UTF-8"}, None, "ja"),
        ({"LANG": "C.UTF-8"}, None, "en"),
        ({}, None, "en"),
        ({"LANG": "en_US.UTF-8"}, "ja", "ja"),  # --lang wins over the locale
    ],
)
def test_language_choice(monkeypatch, env, option, expected):
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert pick_language(option) == expected
