"""The Japanese catalog: complete, placeholders intact, and the shipped .mo compiled from the .po."""

from __future__ import annotations

import io
import string
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_file
from babel.messages.mofile import read_mo, write_mo
from babel.messages.pofile import read_po

from advisor.i18n import pick_language, translation

ROOT = Path(__file__).parents[1]
PO = ROOT / "assets" / "locale" / "ja" / "LC_MESSAGES" / "ptsa.po"
SOURCES = [ROOT / "advisor" / name for name in ("labels.py", "report.py", "tui/app.py", "tui/forms.py", "tui/runs.py", "tui/models.py")]


def catalog():
    with PO.open("rb") as stream:
        return read_po(stream)


def placeholders(text: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}


def test_every_message_translated():
    translated = {m.id: m.string for m in catalog() if m.id}
    for source in SOURCES:
        for _, message, _, _ in extract_from_file("python", str(source), keywords={"_": None, "t": None, "N_": None}):
            assert translated.get(message), f"{source.name}: no Japanese for {message!r}; run `make catalog-template`"


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
