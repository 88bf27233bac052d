"""`ladder new NAME --from STEP`: a starter step file, the parent's model and recipe spelled
out with a word on what each field does, ready to edit."""

from __future__ import annotations

import dataclasses
import inspect
import re
import textwrap

from ..engine.augment import Augment
from ..steps import Step

RECIPE_NOTES = {
    "epochs": "epochs to train (the mission: at most 15)",
    "batch_size": "images per optimizer step",
    "optimizer": "sgd | adamw",
    "lr": "learning rate (the start of a OneCycle schedule)",
    "momentum": "SGD momentum",
    "nesterov": "SGD: Nesterov momentum",
    "weight_decay": "L2 penalty on the weights",
    "decay_norm_and_bias": "False: BatchNorm's scale/shift and biases are not decayed",
    "scheduler": "none | onecycle | step",
    "max_lr": "onecycle: the peak learning rate",
    "pct_start": "onecycle: the share of training spent warming up",
    "step_size": "step: epochs between decays",
    "gamma": "step: the factor at each decay",
    "label_smoothing": "0.1 spreads 10% of each target over the other digits",
    "ema": "decay of a moving average of the weights (evaluated and saved); 0 = off",
    "clean_last": "the last N epochs train on unaugmented images",
}
AUGMENT_NOTES = {
    "rotation": "degrees, +-",
    "degrees": "affine rotation, degrees, +-",
    "shear": "degrees, +-",
    "translate": "fraction of the image, +-, each axis",
    "scale": "(smallest, largest) zoom",
    "brightness": "factor drawn from [1 - b, 1 + b]",
    "contrast": "factor drawn from [1 - c, 1 + c]",
    "elastic": "pixels: the largest elastic displacement",
    "elastic_grid": "control points per side of the elastic field",
}


def _absolute_imports(module) -> list[str]:
    """The parent module's imports, made absolute so that they work from any folder."""
    lines = []
    for line in inspect.getsource(module).splitlines():
        if (
            not line.startswith(("import ", "from "))
            or line.startswith("from __future__")
            or line.startswith("from ..engine.step ")
        ):  # Recipe and Step: mnist_ladder's
            continue
        # the engine's modules by the public paths step files use (`mnist_ladder.models`)
        line = re.sub(r"^from \.\.engine\.(models|augment) ", r"from mnist_ladder.\1 ", line)
        line = re.sub(r"^from \.\.engine import ", "from mnist_ladder import ", line)
        line = re.sub(r"^from \.\.(\w*)", lambda m: "from mnist_ladder" + ("." + m[1] if m[1] else ""), line)
        line = re.sub(
            r"^from \.(\w*)", lambda m: "from mnist_ladder.steps" + ("." + m[1] if m[1] else ""), line
        )
        lines.append(line)
    return lines


def _build_source(parent: Step) -> tuple[str, list[str]]:
    """The parent's build function as source, renamed `build`, and the imports it needs."""
    fn = parent.build
    try:
        source = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        source = ""
    if not source.startswith("def "):  # a lambda or a callable object: reuse it as it is
        return (
            f"# {parent.name}'s network, reused as it is; write your own `def build()` to "
            f"change it.\nbuild = PARENT.build\n"
        ), []
    source = re.sub(r"^def \w+\(", "def build(", source, count=1)
    return source, _absolute_imports(inspect.getmodule(fn))


def _fields(obj, notes: dict[str, str], indent: str) -> list[str]:
    lines = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, Augment):
            lines.append(f"{indent}augment=Augment(  # applied to each training image, per epoch")
            lines += _fields(value, AUGMENT_NOTES, indent + "    ")
            lines.append(f"{indent}),")
            continue
        lines.append(f"{indent}{f.name}={value!r},  # {notes.get(f.name, '')}".rstrip(" #"))
    return lines


def starter_file(name: str, parent: Step) -> str:
    build, imports = _build_source(parent)
    base = parent.parent or parent.name
    head = [
        f'"""{name}: {parent.name} with ... (say here what this step changes, and why).',
        "",
        f"Written by `ladder new {name} --from {parent.name}`: {parent.name}'s network and "
        "recipe, spelled out to edit.",
        f"Run it:      ladder run steps/{name}.py --seed 1      (then --seed 2, 3 ...)",
        f"Compare it:  ladder compare {parent.name} {name}",
        '"""',
        "",
        "import dataclasses  # dataclasses.replace(PARENT.recipe, lr=...) reuses a recipe",
        "",
        *sorted(set(imports) | {"from mnist_ladder import Augment, Recipe, Step, step"}),
        "",
        f"PARENT = step({parent.source_file or parent.name!r})  # the step this one changes",
        "",
        "",
        build.rstrip(),
        "",
        "",
        "RECIPE = Recipe(",
        *_fields(parent.recipe, RECIPE_NOTES, "    "),
        ")",
        "",
        "STEP = Step(",
        f"    name={name!r},",
        f"    title={parent.title + ' (your change here)'!r},  # what this step changes",
        "    build=build,  # a fresh, untrained network: [N, 1, 28, 28] -> logits [N, 10]",
        "    recipe=RECIPE,",
        f"    builds_on={base!r},  # the report and `ladder compare` measure against it",
        f"    target={parent.target!r},",
        "    analysis=(),  # what the runs showed, once you have them",
        ")",
        "",
    ]
    return "\n".join(head)
