"""Ship a trained model: ONNX (dynamic batch) or TorchScript, taking [N, 1, 28, 28] images in
[0, 1] (normalization included) and returning logits [N, 10]."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from ..core.errors import LadderError
from ..core.files import write_atomic
from .predict import WithNormalization


class ExportError(LadderError, ValueError):
    """The export could not be written: one line for the user."""


def export(model: nn.Module, fmt: str, out: Path) -> Path:
    """Writes `out` whole or not at all: into a file beside it, renamed into place."""
    if fmt not in ("onnx", "torchscript"):
        raise ExportError(f"unknown format {fmt!r}; use onnx or torchscript")
    if out.is_dir():
        raise ExportError(f"{out} is a folder; give a file name, e.g. {out / ('model.' + fmt)}")
    wrapped = WithNormalization(model).eval()
    example = torch.rand(2, 1, 28, 28)

    def save(tmp: Path) -> None:
        if fmt == "torchscript":  # deprecated by torch in favour of torch.export; still asked for
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.jit.trace(wrapped, example).save(str(tmp))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.onnx.export(
                    wrapped,
                    (example,),
                    dynamo=True,
                    input_names=["images"],
                    output_names=["logits"],
                    dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                    verbose=False,
                )
            program.save(str(tmp))

    try:
        write_atomic(out, save, make_parent=True, hidden=True)
    except (OSError, RuntimeError) as e:  # torch reports a failed write as a RuntimeError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"cannot write {out}: {getattr(e, 'strerror', None) or first}") from None
    return out
