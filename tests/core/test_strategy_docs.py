"""The strategy reference and JSON Schema are generated from the types and checked in:
they must match the code, and the schema must accept the shipped strategy and refuse a
bad one the way the loader does."""

from __future__ import annotations

import tomllib
from pathlib import Path

import jsonschema
import pytest

from router.core.strategy_docs import reference_text, schema_text, strategy_schema

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_checked_in_reference_and_schema_match_the_code():
    assert (CONFIGS / "STRATEGY_REFERENCE.md").read_text() == reference_text(), (
        "regenerate: python -m router schema reference > configs/STRATEGY_REFERENCE.md"
    )
    assert (CONFIGS / "strategy.schema.json").read_text() == schema_text(), (
        "regenerate: python -m router schema strategy > configs/strategy.schema.json"
    )


def test_every_field_has_a_type_default_and_a_sentence():
    rows = [ln for ln in reference_text().splitlines() if ln.startswith("| `")]
    assert len(rows) > 100
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        assert cells[1] and cells[3] and cells[5], row  # type, default, sentence


def _shipped() -> dict:
    raw = tomllib.loads((CONFIGS / "strategy.toml").read_text())
    book = tomllib.loads((CONFIGS / raw.pop("partner_book")).read_text())
    return {**raw, **book}


def test_the_schema_accepts_the_shipped_strategy_and_refuses_a_bad_one():
    schema = strategy_schema()
    jsonschema.validate(_shipped(), schema)
    bad = _shipped()
    bad["partners"][2]["terms"]["rev_share"] = 3.0
    with pytest.raises(jsonschema.ValidationError, match="3.0"):
        jsonschema.validate(bad, schema)
