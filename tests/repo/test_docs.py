"""The docs stay true as the code grows: every scheme is in the guide, every
setting in the README."""

from pathlib import Path

from embquant import codecs
from embquant.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_every_scheme_has_a_section_in_the_guide():
    headings = [l for l in (ROOT / "docs" / "schemes.md").read_text().splitlines() if l.startswith("### ")]
    for name in codecs.all_schemes():
        assert any(f"`{name}`" in h for h in headings), name


def test_every_setting_is_documented():
    readme = (ROOT / "README.md").read_text()
    for field in Settings.model_fields:
        if field == "log_level":
            continue
        assert f"EMBQUANT_{field.upper()}" in readme, field
