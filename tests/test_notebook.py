"""The notebook executes top to bottom (a copy, on a small subset): it can never rot."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "ladder.ipynb"


def test_the_notebook_runs_top_to_bottom(tmp_path: Path, monkeypatch) -> None:
    copy = tmp_path / "ladder.ipynb"
    shutil.copy(NOTEBOOK, copy)
    monkeypatch.setenv("LADDER_NOTEBOOK_TRAIN_LIMIT", "2000")
    monkeypatch.setenv("LADDER_NOTEBOOK_EPOCHS", "1")
    nb = nbformat.read(copy, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # kept unexecuted
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()  # raises on a failing cell
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "final test accuracy" in text and "6,720 parameters" in text
    assert "Difference, B - A" in text  # the comparison over seeds printed
    assert (tmp_path / "runs" / "ladder.db").is_file()  # the notebook's runs: its own store

    def shows_an_image(cell) -> bool:
        return any("image/png" in o.get("data", {}) for o in cell.outputs)

    code = [c for c in nb.cells if c.cell_type == "code"]
    sees = [c for c in code if "insight.plot_" in c.source]  # what the network sees
    assert len(sees) == 4 and all(shows_an_image(c) for c in sees)
    assert all(shows_an_image(c) for c in code if "plt.subplots(" in c.source)  # backend kept
