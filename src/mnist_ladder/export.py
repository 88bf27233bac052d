"""Ship a trained model: ONNX (dynamic batch) or TorchScript, taking [N, 1, 28, 28] images in
[0, 1] (normalization included) and returning logits [N, 10]."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from .predict import WithNormalization


def export(model: nn.Module, fmt: str, out: Path) -> Path:
    wrapped = WithNormalization(model).eval()
    example = torch.rand(2, 1, 28, 28)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torchscript":  # deprecated by torch in favour of torch.export; still asked for
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.trace(wrapped, example).save(str(out))
    elif fmt == "onnx":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapped, (example,), dynamo=True, input_names=["images"], output_names=["logits"],
                dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, verbose=False)
        program.save(str(out))
    else:
        raise ValueError(f"unknown format {fmt!r}; use onnx or torchscript")
    return out
