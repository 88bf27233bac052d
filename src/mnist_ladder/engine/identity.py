"""What a run's training identity is made of, from the engine's side: a hash of the engine's
own sources (the C kernels included), and a fingerprint of a step's source with its prose
taken out.

A comment or any byte changed in the engine makes its hash another (a kernel compiled from
other source is other code). A step's file is compared as Python, not as text: its docstrings,
comments and the prose fields of its `Step(...)` and `Variant(...)` calls (title, target,
analysis, the seed document's numbers, what a variant changes) are left out, since editing
them changes no trained weight.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
from pathlib import Path

from .step import Step, Variant

ENGINE_DIR = Path(__file__).resolve().parent
SOURCE_SUFFIXES = (".py", ".c")
# Keyword arguments of Step/Variant (and dataclasses.replace of them) that are prose or
# bookkeeping for the report, not training.
PROSE_FIELDS = frozenset({"title", "target", "analysis", "change", "seed", "mean_final_goal", "builds_on"})
PROSE_CALLS = frozenset({"Step", "Variant", "replace"})
POSITIONAL = {cls.__name__: tuple(f.name for f in dataclasses.fields(cls)) for cls in (Step, Variant)}


def _hash_engine() -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in ENGINE_DIR.rglob("*") if p.suffix in SOURCE_SUFFIXES):
        h.update(path.relative_to(ENGINE_DIR).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


# Read once, when the package is imported: the sources this process runs. Hashing at each
# run's start would credit a long `ladder ladder` to an edit made while it ran.
_ENGINE_HASH = _hash_engine()


def engine_hash() -> str:
    """sha256 of the engine's sources as imported (every .py and .c file under engine/)."""
    return _ENGINE_HASH


class _StripProse(ast.NodeTransformer):
    def _drop_docstring(self, node: ast.AST) -> ast.AST:
        body = getattr(node, "body", None)
        if (
            body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
        return self.generic_visit(node)

    visit_Module = visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _drop_docstring

    def visit_Call(self, node: ast.Call) -> ast.AST:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name in PROSE_CALLS:
            node.keywords = [k for k in node.keywords if k.arg not in PROSE_FIELDS]
            order = POSITIONAL.get(name, ())  # Step("mine", "a title", build, ...) too
            node.args = [
                ast.Constant(None) if i < len(order) and order[i] in PROSE_FIELDS else a
                for i, a in enumerate(node.args)
            ]
        return self.generic_visit(node)


def fingerprint(source: str) -> str:
    """A step's source as it matters to training: parsed, prose removed, hashed. Source that
    does not parse (a fragment recovered from a notebook) is hashed as text."""
    try:
        tree = _StripProse().visit(ast.parse(source))
        text = ast.dump(tree, annotate_fields=False, include_attributes=False)
    except SyntaxError:
        text = source
    return hashlib.sha256(text.encode()).hexdigest()[:16]
