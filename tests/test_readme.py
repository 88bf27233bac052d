"""The README's ladder table is written by hand: it must name every step with its model's count."""

from __future__ import annotations

import re
from pathlib import Path

from mnist_ladder import steps

README = Path(__file__).parents[1] / "README.md"


def test_readme_ladder_table_matches_the_registry() -> None:
    rows = re.findall(r"^\| (step\d+) \|.*\| ([\d,]+) \|$", README.read_text(), re.MULTILINE)
    table = {name: int(count.replace(",", "")) for name, count in rows}
    assert table == {name: step.params for name, step in steps.STEPS.items()}
