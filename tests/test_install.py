"""Installed as people install tools: the checkout built into an sdist and a wheel (the wheel
built from the sdist, as `python -m build` does), installed into a fresh virtual environment
by the notebook's own first cell (the Colab way: torch already there is kept), then used from
an empty folder outside the checkout, the reference results found inside the package. The
notebook itself is executed against that installed package, not `src/`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "ladder.ipynb"
CONSTRAINTS = ROOT / "constraints.txt"


def sh(*argv: str | Path, cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    return done


def ok(*argv: str | Path, cwd: Path, env: dict, timeout: float = 600) -> str:
    done = sh(*argv, cwd=cwd, env=env, timeout=timeout)
    assert done.returncode == 0, (
        f"{argv}: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done.stdout


def user_env(venv: Path) -> dict:
    """A user's shell: the venv first on PATH, nothing pointing back at the checkout."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MNIST_LADDER_", "PYTHON", "VIRTUAL_ENV"))
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def first_cell_with(source: str) -> str:
    """The notebook's install cell, with SOURCE set as a Colab user would set it."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(c.source for c in nb.cells if c.cell_type == "code")
    assert 'SOURCE = ""' in cell
    return cell.replace('SOURCE = ""', f"SOURCE = {source!r}", 1)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("install")
    dist, venv, work = root / "dist", root / "venv", root / "work"
    work.mkdir()
    env = user_env(venv)
    ok(sys.executable, "-m", "build", "--outdir", dist, ROOT, cwd=root, env={**os.environ})
    wheel = next(dist.glob("mnist_ladder-*.whl"))
    assert next(dist.glob("mnist_ladder-*.tar.gz"))
    ok(sys.executable, "-m", "venv", venv, cwd=root, env=env)
    python = venv / "bin" / "python"
    pip = [python, "-m", "pip", "install", "-q", "-c", CONSTRAINTS]
    ok(*pip, "torch", cwd=root, env=env)  # a machine that has torch already, as Colab has
    torch_file = Path(ok(python, "-c", "import torch; print(torch.__file__)", cwd=root, env=env).strip())
    torch_before = torch_file.stat().st_mtime_ns
    # The notebook's first cell, run as Colab runs it (in the notebook's Python), from a file:// URL
    (root / "cell.py").write_text(first_cell_with(wheel.as_uri()))
    ok(python, root / "cell.py", cwd=work, env=env)
    assert torch_file.stat().st_mtime_ns == torch_before, "installing mnist-ladder reinstalled torch"
    ok(*pip, f"{wheel}[export,serve]", "nbclient", "nbformat", "ipykernel", cwd=root, env=env)
    where = ok(python, "-c", "import mnist_ladder; print(mnist_ladder.__file__)", cwd=work, env=env)
    package = Path(where.strip()).parent
    assert "site-packages" in package.parts, package  # the installed copy, not src/
    return {"root": root, "wheel": wheel, "venv": venv, "work": work, "env": env, "package": package}


def package_files(package: Path) -> set[str]:
    return {str(p.relative_to(package)) for p in package.rglob("*") if "__pycache__" not in p.parts}


def test_the_wheel_carries_the_reference_results_and_is_small(installed) -> None:
    reference = installed["package"] / "reference"
    assert sorted(p.name for p in reference.iterdir()) == ["ladder.db"]
    size = installed["wheel"].stat().st_size
    assert size < 8_000_000  # Step 0's 25 MB weights stay out
    stated = re.search(r"The wheel \(about ([\d.]+) MB\)", (ROOT / "README.md").read_text())
    assert stated and abs(float(stated.group(1)) * 1e6 - size) < 0.15 * size  # the README says its size


def test_a_user_climbs_from_an_empty_folder(installed) -> None:
    work, env, package = installed["work"], installed["env"], installed["package"]
    before = package_files(package)

    def ladder(*args: str, timeout: float = 600) -> str:
        return ok("ladder", *args, cwd=work, env=env, timeout=timeout)

    assert "step13" in ladder("list")
    assert re.search(r"step6-s1-\S+\s.*finished", ladder("runs", "--reference"))
    assert "no runs" in ladder("runs")  # the default store may be absent: no runs of theirs yet
    ladder("new", "mystep")
    ladder("run", "mystep", "--seed", "1", "--epochs", "1", "--train-limit", "2000", "--eval-limit", "1000")
    mine = ladder("compare", "mystep", "step6")
    assert "step6: 6,720 parameters, test protocol, 5 seed(s)" in mine  # the reference Step 6
    assert "Difference, B - A" in ladder("compare", "step6", "step13")
    ladder("report")
    assert (work / "runs" / "REPORT.md").is_file()

    subprocess.run(
        [
            installed["venv"] / "bin" / "python",
            "-c",
            "from PIL import Image; from mnist_ladder.engine import data; "
            "Image.fromarray(data.load().test_images[0].numpy()).save('digit.png')",
        ],
        cwd=work,
        env=env,
        check=True,
    )
    assert re.search(r"digit\.png: 7 ", ladder("predict", "best", "digit.png"))
    ladder("export", "best", "--out", "best.onnx")
    assert (work / "best.onnx").stat().st_size > 1000

    server = subprocess.Popen(
        ["ladder", "serve", "--port", "0"], cwd=work, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        line = server.stderr.readline()
        url = re.search(r"http://\S+/", line).group(0)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "api/models", timeout=5) as response:
                    models = json.load(response)
                break
            except OSError:
                assert time.monotonic() < deadline, "the page's server did not answer"
                time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(10)
    assert "step12" in json.dumps(models) and "mystep" in json.dumps(models)

    # The shipped reference is read, never written
    refused = sh("ladder", "run", "step6", "--reference", "--epochs", "1", cwd=work, env=env)
    assert refused.returncode != 0 and "only from a checkout" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    assert package_files(package) == before, "a command wrote into the installed package"


def test_the_notebook_runs_against_the_installed_package(installed) -> None:
    work = installed["root"] / "notebook"
    work.mkdir()
    copy = work / "ladder.ipynb"
    copy.write_bytes(NOTEBOOK.read_bytes())
    assert all(not c.get("outputs") for c in nbformat.read(copy, as_version=4).cells if c.cell_type == "code")
    env = {**installed["env"], "LADDER_NOTEBOOK_TRAIN_LIMIT": "2000", "LADDER_NOTEBOOK_EPOCHS": "1"}
    # Executed by the installed Python, whose kernel is that environment's own
    script = (
        "import sys, nbformat\n"
        "from nbclient import NotebookClient\n"
        "nb = nbformat.read(sys.argv[1], as_version=4)\n"
        "client = NotebookClient(nb, timeout=600, kernel_name='python3')\n"
        "client.execute(cwd='.')\n"
        "nbformat.write(nb, sys.argv[1])\n"
    )
    ok(installed["venv"] / "bin" / "python", "-c", script, copy, cwd=work, env=env, timeout=900)
    nb = nbformat.read(copy, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    text = "\n".join(o.get("text", "") for c in code for o in c.outputs)
    assert "final test accuracy" in text and "6,720 parameters" in text
    assert "Difference, B - A" in text  # the last cell: the comparison over seeds, with the reference
    assert (work / "runs" / "ladder.db").is_file()  # the notebook's runs: its own store

    def shows_an_image(cell) -> bool:
        return any("image/png" in o.get("data", {}) for o in cell.outputs)

    sees = [c for c in code if "insight.plot_" in c.source]  # what the network sees
    assert len(sees) == 4 and all(shows_an_image(c) for c in sees)
    assert all(shows_an_image(c) for c in code if "plt.subplots(" in c.source)  # backend kept
