"""A run's training identity: a hash of everything that determines what it learns, and of
nothing else. Run reuse (`ladder ladder`), resume and the layout cache all key on it.

In it: the engine's sources, the C kernels included (`engine.identity.engine_hash`); the
step's network and recipe as code — a built-in step's file with every step file it imports,
a user's step file, or a searched architecture — with prose left out; the recipe as run
(epochs and batch size included); the protocol and data options; the precision; torch's
version. Not in it: the seed (a run's own key), the report, the CLI, the page, the sweep's UI,
the docs, a step's title, target or analysis, and the memory layout (it changes speed, not
the function computed).

Runs stored before identities were recorded have none: their code hash covered the whole
flat package, whose engine files are not byte-identical to any engine since, so they count as
made by other code, for reuse and for resume alike.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import textwrap

import torch

from .. import steps
from ..engine.identity import engine_hash, fingerprint
from ..engine.step import Recipe, Step


def network_identity(step: Step, arch: dict | None) -> str:
    """The network's part: the code that builds it (and the step's recipe as written)."""
    if arch is not None:  # built by engine/family.py from these numbers
        return "arch:" + json.dumps(arch, sort_keys=True)
    if step.source is not None:  # a user's step file or a notebook cell
        return "source:" + fingerprint(step.source)
    if step.name.partition(".")[0] in steps.STEPS:
        return "builtin:" + steps.network_fingerprint(step.name)
    try:  # a Step made in code that is neither (a test's, a script's without a source)
        return "build:" + fingerprint(textwrap.dedent(inspect.getsource(step.build)))
    except (OSError, TypeError):
        return f"unknown:{step.name}:{step.params}"


def training_identity(step: Step, arch: dict | None, recipe: Recipe, protocol: str, amp: bool) -> str:
    """The identity of a run of `step` (or of the searched architecture `arch`) trained with
    `recipe` under `protocol` (test | val | val-only, with any data subset)."""
    parts = {
        "engine": engine_hash(),
        "network": network_identity(step, arch),
        "recipe": recipe.to_dict(),
        "protocol": protocol,
        "precision": "bf16" if amp else "fp32",
        "torch": torch.__version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
