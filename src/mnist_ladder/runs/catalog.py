"""Your steps beside ours: step files of your own, checked, and a merged view of the ladder.

Any Python file that defines `STEP` (a `Step`, like the built-in ones) is a step. A folder of
them (`--steps-dir`, $MNIST_LADDER_STEPS, else `./steps/` when it exists) joins the built-in
steps in a `Catalog`; the built-in registry (`mnist_ladder.steps.STEPS`) is never changed, so
nothing that reads it sees a user's files. A broken file is one line naming the file and
what is wrong (`StepFileError`), never a traceback.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .. import steps
from ..core.errors import LadderError
from ..engine.models import count_parameters
from ..steps import Step

# Step files being run right now: a file that looks steps up (`ml.step("step6")`) while it
# loads must not load itself again.
_loading: set[Path] = set()
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")  # no '.', which separates a step from its variant


class StepFileError(LadderError, ValueError):
    """A user's step file that cannot be used: one line for the user."""


def default_steps_dir() -> Path | None:
    env = os.environ.get("MNIST_LADDER_STEPS")
    if env:
        return Path(env)
    return Path("steps") if Path("steps").is_dir() else None


def looks_like_path(name: str) -> bool:
    return name.endswith(".py") or "/" in name or os.sep in name


def check_model(step: Step, where: str) -> None:
    """The forward pass works on a [2, 1, 28, 28] batch, returns [2, 10], and `params` (when
    the file pins it) is the model's own count."""
    try:
        model = step.build()
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, 1, 28, 28))
    except Exception as e:  # a user's model can fail in any way; the message is what matters
        raise StepFileError(
            f"{where}: the model's forward pass fails on a [2, 1, 28, 28] batch "
            f"({type(e).__name__}: {_first_line(e)})"
        ) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, 10):
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise StepFileError(
            f"{where}: the model returns {shape} for a [2, 1, 28, 28] batch, "
            "not [2, 10] (logits for the ten digits)"
        )
    counted = count_parameters(model)
    if step.params != counted:
        raise StepFileError(
            f"{where}: STEP pins params={step.params:,} but its model has "
            f"{counted:,} parameters (update params, or leave it out)"
        )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@contextlib.contextmanager
def contained(path: Path) -> Iterator[None]:
    """A user's step file runs inside every command that lists steps: what it prints goes to
    stderr (stdout may be `compare --json`), and its sys.exit() ends the loading of the file,
    not the command, which then names the file."""
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    except SystemExit as e:
        raise StepFileError(f"{path}: the file called sys.exit({e.code!r}) while being loaded") from None


def load_file(path: Path | str) -> Step:
    """The step a file defines, checked, with its source text attached."""
    path = Path(path)
    if not path.is_file():
        raise StepFileError(f"{path}: no such step file")
    if path.suffix != ".py":
        raise StepFileError(f"{path}: not a Python file (a step file ends in .py and defines STEP)")
    try:
        source = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise StepFileError(f"{path}: cannot be read ({_first_line(e)})") from None
    try:
        code = compile(source, str(path), "exec")
    except SyntaxError as e:
        raise StepFileError(f"{path}: line {e.lineno}: syntax error ({e.msg})") from None
    # A module of its own, registered while it runs so that dataclasses and pickling can find
    # it; the name carries the file's location so that two files never share a module.
    module_name = f"mnist_ladder_user_steps._{abs(hash(str(path.resolve())))}_{path.stem}"
    spec = importlib.util.spec_from_loader(module_name, loader=None, origin=str(path))
    module = importlib.util.module_from_spec(spec)
    module.__file__ = str(path)
    sys.modules[module_name] = module
    _loading.add(path.resolve())
    try:
        with contained(path):
            exec(code, module.__dict__)
    except StepFileError:
        sys.modules.pop(module_name, None)
        raise
    except Exception as e:  # whatever the user's file raises, reported as one line
        sys.modules.pop(module_name, None)
        raise StepFileError(
            f"{path}: running the file failed ({type(e).__name__}: {_first_line(e)})"
        ) from None
    finally:
        _loading.discard(path.resolve())
    step = getattr(module, "STEP", None)
    if not isinstance(step, Step):
        raise StepFileError(
            f"{path}: defines no STEP (a mnist_ladder.Step; "
            "`ladder new NAME --from step6` writes a starter file)"
        )
    if not NAME.match(step.name):
        raise StepFileError(
            f"{path}: step name {step.name!r}: use letters, digits, - and _ (starting with a letter)"
        )
    if step.name in steps.STEPS:
        raise StepFileError(f"{path}: step name {step.name!r} is a built-in step; give yours another name")
    with contained(path):
        check_model(step, str(path))
    return replace(step, source=source, source_file=str(path.resolve()))


@dataclass(frozen=True)
class Catalog:
    """The built-in steps, then the user's: what every command that takes a step name sees."""

    user: dict[str, Step]

    @property
    def steps(self) -> dict[str, Step]:
        return {**steps.STEPS, **self.user}

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps.values())

    def get(self, name: str) -> Step:
        """A step by name (built-in or the user's), `STEP.VARIANT`, or a step file's path."""
        if looks_like_path(name):
            return load_file(name)
        return steps.get(name, self.steps)


def catalog(steps_dir: Path | str | None = None) -> Catalog:
    """The merged ladder: built-in steps plus every `*.py` step file in `steps_dir` (default:
    $MNIST_LADDER_STEPS, else ./steps when it exists)."""
    folder = Path(steps_dir) if steps_dir else default_steps_dir()
    if folder is None:
        return Catalog({})
    if not folder.is_dir():
        raise StepFileError(f"{folder}: no such steps folder")
    user: dict[str, Step] = {}
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_") or path.resolve() in _loading:
            continue
        step = load_file(path)
        if step.name in user:
            raise StepFileError(
                f"{user[step.name].source_file} and {path.resolve()} both define "
                f"step {step.name!r}: rename one"
            )
        user[step.name] = step
    return Catalog(user)


def inline_source(step: Step) -> str:
    """What `inspect` can recover of a step defined in a notebook cell or a script: its build
    function's source, and the recipe as data."""
    import inspect

    try:
        build = inspect.getsource(step.build)
    except (OSError, TypeError):
        build = f"# build: {step.build!r} (source not recoverable)\n"
    return f"{build}\n# recipe\n{step.recipe!r}\n"
