"""BatchNorm with its neighbouring ReLU and dropout as one operation on the CPU, a 2x2
max-pool (`max_pool`) and the epoch's augmentation (`augment_images`), all in C (`kernels.c`).

Why by hand: run as modules, a Step 6 block is about eight passes over its activation map
forward and backward (ReLU, statistics, normalization, dropout mask and multiply, and their
gradients), and on these small maps each pass costs what it reads and writes in memory, not
its arithmetic. torch has no fused CPU kernel for this (torch.compile's would be, but it lost
overall here: `benchmarks/speed.py --ablate`), and its channels-last BatchNorm walks the map
C values at a time, slow at the ladder's 8-20 channels. So `kernels.c` does it in four
passes: statistics and the normalized output forward, the gradient's sums and the input
gradient backward, with the ReLUs and the dropout applied in the same loops and the dropout
kept as one bit an element. The map is viewed as rows of `tile` = C * k values (k copies of
the channel vector) so the loops run at full vector width; the k column sums fold into the
C channel sums exactly. Sums are in double, statistics and weight gradients in fp32 or
better whatever the activations' precision. `Conv.forward` (models.py) uses it on the CPU in
channels-last, training and evaluating (in eval only where no gradient is wanted: it has no
backward there); everything else (CUDA, other layouts, hooks, a machine
without a C compiler) runs the modules one by one.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import math
import os
import platform
import re
import subprocess
import warnings
from pathlib import Path

import torch
from torch import nn

from ..core.files import write_atomic
from .augment import Augment, inverse_affine
from .data import machine_cache_dir

MAX_TILE = 128  # values a row: full vector registers, and any batch size divides it out
SOURCE = Path(__file__).with_name("kernels.c")
# -march=native: built on the machine that runs it, for its vector width. No fast-math: the
# results must be torch's arithmetic; -fno-trapping-math only lets the ReLU's selects vectorize.
CFLAGS = ("-O3", "-march=native", "-fopenmp", "-ffp-contract=off", "-fno-trapping-math", "-shared", "-fPIC")


def _cpu_flags() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return next((ln for ln in info if ln.startswith("flags")), "") + next(
        (ln for ln in info if ln.startswith("model name")), ""
    )


@functools.cache
def kernels() -> ctypes.CDLL | None:
    """kernels.c compiled for this CPU with the system C compiler ($CC, else cc), once:
    cached by source, compiler, flags and CPU in the machine cache folder. None where it
    cannot be built; the blocks then run as modules."""
    cc = os.environ.get("CC", "cc")
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True).stdout
        key = hashlib.sha256(
            "\0".join([SOURCE.read_text(), version, *CFLAGS, _cpu_flags()]).encode()
        ).hexdigest()[:16]
        lib = machine_cache_dir() / "kernels" / f"kernels-{key}.so"
        if not lib.exists():
            write_atomic(  # atomic: concurrent runs each see a whole file
                lib,
                lambda tmp: subprocess.run(
                    [cc, *CFLAGS, "-o", str(tmp), str(SOURCE)], capture_output=True, text=True, check=True
                ),
                make_parent=True,
                hidden=True,
            )
        # torch is imported, so the library's OpenMP is torch's runtime and thread pool
        built = ctypes.CDLL(str(lib))
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or e
        warnings.warn(
            f"the CPU kernels (kernels.c) could not be built ({detail}); BatchNorm "
            "blocks and max-pools run as torch modules, more slowly",
            stacklevel=2,
        )
        return None
    ptr = ctypes.c_void_p
    block = ctypes.POINTER(_Block)
    built.nb_forward.argtypes = [
        block,
        ptr,
        ptr,
        ptr,
        ptr,
        ctypes.c_int64,
        ptr,
        ptr,
        ptr,
        ptr,
        ctypes.c_double,
        ptr,
        ptr,
    ]
    built.nb_backward.argtypes = [block, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr]
    sizes = [ctypes.c_int64] * 4 + [ctypes.c_int, ctypes.c_int]  # n, h, w, c, element size, threads
    built.mp_forward.argtypes = [ptr, ptr, ptr, *sizes]
    built.mp_backward.argtypes = [ptr, ptr, ptr, *sizes]
    built.aug_images.argtypes = [
        ptr,
        ptr,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ptr,
        ptr,
        ptr,
        ptr,
        ctypes.c_float,
        ctypes.c_float,
        ptr,
        ctypes.c_int,
    ]
    for fn in (built.nb_forward, built.nb_backward, built.mp_forward, built.mp_backward, built.aug_images):
        fn.restype = None
    return built


def tile_factor(channels: int, positions: int) -> int:
    """k: the largest power of two with k * channels <= MAX_TILE that divides `positions`."""
    k = 1
    while k * 2 * channels <= MAX_TILE and positions % (k * 2) == 0:
        k *= 2
    return k


def dropout_hits(n: int, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """The positions a dropout of rate p drops among n elements: a Poisson number of uniform
    positions (see `models.Dropout`); both paths draw them this way, so they drop the same."""
    rate = torch.tensor(-n * math.log1p(-p), dtype=torch.float64)
    hits = int(torch.poisson(rate, generator=generator))
    return torch.randint(0, n, (hits,), generator=generator)


# The generators dropout draws from while a model trains: one a seed, in the order its seeds
# are packed (`pack.py`). Each seed's masks come from its own stream, so a seed drops the same
# elements trained alone or packed with others, and nothing draws from torch's global
# generator. None (a model called outside `fit`): one seed, the global generator.
_dropout_streams: list[torch.Generator] | None = None


@contextlib.contextmanager
def dropout_streams(generators: list[torch.Generator]):
    global _dropout_streams
    before, _dropout_streams = _dropout_streams, generators
    try:
        yield
    finally:
        _dropout_streams = before


def dropout_positions(x: torch.Tensor, p: float) -> torch.Tensor:
    """Where a dropout of rate p drops in `x`, as positions in channels-last order (the
    storage order of the maps the ladder trains on; plain order for [N, F]). With K seeds
    packed, x is [N, K*C, ...]: seed k draws the positions of its own [N, C, ...] map from
    its stream, mapped to its channels k*C .. k*C+C-1."""
    streams = _dropout_streams or [None]
    k_seeds = len(streams)
    if k_seeds == 1:
        return dropout_hits(x.numel(), p, streams[0])
    if x.dim() not in (2, 4):
        raise ValueError(f"a dropout on a {x.dim()}-d map cannot be packed (2-d or 4-d only)")
    c = x.shape[1] // k_seeds
    n = x.numel() // k_seeds
    parts = []
    for k, generator in enumerate(streams):
        hits = dropout_hits(n, p, generator)
        parts.append(hits.div(c, rounding_mode="floor").mul_(k_seeds * c).add_(hits.remainder(c) + k * c))
    return torch.cat(parts)


class _Block(ctypes.Structure):
    """kernels.c's `Block`: a map's shape as rows of `T` values, and the block's settings."""

    _fields_ = [
        ("rows", ctypes.c_int64),
        ("T", ctypes.c_int32),
        ("C", ctypes.c_int32),
        ("bf16", ctypes.c_int32),
        ("pre_relu", ctypes.c_int32),
        ("post_relu", ctypes.c_int32),
        ("train", ctypes.c_int32),
        ("threads", ctypes.c_int32),
        ("keep", ctypes.c_double),
        ("eps", ctypes.c_double),
    ]


def _ptr(t: torch.Tensor | None) -> ctypes.c_void_p | None:
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _block(
    z: torch.Tensor, bn: nn.BatchNorm2d, pre_relu: bool, post_relu: bool, *, train: bool, keep: float
) -> _Block:
    n, c, h, w = z.shape
    k = tile_factor(c, n * h * w)
    return _Block(
        rows=z.numel() // (c * k),
        T=c * k,
        C=c,
        bf16=z.dtype == torch.bfloat16,
        pre_relu=pre_relu,
        post_relu=post_relu,
        train=train,
        threads=torch.get_num_threads(),
        keep=keep,
        eps=bn.eps,
    )


class _NormBlock(torch.autograd.Function):
    """y = post(dropout(BN(pre(z)))): pre is ReLU or identity, post ReLU or identity. The
    forward also moves `bn`'s running statistics, as torch's BatchNorm does."""

    @staticmethod
    @torch.autocast("cpu", enabled=False)  # bf16 activations, fp32 statistics and parameters
    def forward(ctx, z, weight, bias, bn, pre_relu, post_relu, keep, hits):
        block = _block(z, bn, pre_relu, post_relu, train=True, keep=keep)
        c = block.C
        y = torch.empty_like(z)
        mask = torch.empty((z.numel() + 7) // 8, dtype=torch.uint8)  # the dropout, a bit each
        scale_shift = torch.empty(2, block.T)
        moments = torch.empty(2, c, dtype=torch.float64)  # mean and 1/std
        kernels().nb_forward(
            block,
            _ptr(z),
            _ptr(y),
            _ptr(mask),
            _ptr(hits),
            0 if hits is None else hits.numel(),
            _ptr(weight),
            _ptr(bias),
            _ptr(bn.running_mean),
            _ptr(bn.running_var),
            _momentum(bn),
            _ptr(scale_shift),
            _ptr(moments),
        )
        ctx.save_for_backward(z, mask, scale_shift, moments, weight)
        ctx.block = block
        return y

    @staticmethod
    def backward(ctx, dy):
        z, mask, scale_shift, moments, weight = ctx.saved_tensors
        dy = dy.to(z.dtype).contiguous(memory_format=torch.channels_last)
        dz, dweight, dbias = torch.empty_like(z), torch.empty_like(weight), torch.empty_like(weight)
        kernels().nb_backward(
            ctx.block,
            _ptr(dy),
            _ptr(z),
            _ptr(dz),
            _ptr(mask),
            _ptr(scale_shift),
            _ptr(moments),
            _ptr(weight),
            _ptr(dweight),
            _ptr(dbias),
        )
        return dz, dweight, dbias, None, None, None, None, None


def _momentum(bn: nn.BatchNorm2d) -> float:
    """This step's running-statistics momentum, counting the step as torch does."""
    bn.num_batches_tracked.add_(1)
    return bn.momentum if bn.momentum is not None else 1 / float(bn.num_batches_tracked)


def _traced() -> bool:
    """torch.compile, torch.export and torch.jit.trace must see torch operations, not a C call."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def fusable(order: str) -> bool:
    """Whether a block is conv, [ReLU], BatchNorm, [ReLU and dropout in either order]: what
    `norm_block` computes (dropout commutes with a ReLU: both keep zeros, the scale is > 0)."""
    return re.fullmatch(r"cr?b[rd]*", order) is not None and order.count("r") <= 1 and order.count("d") <= 1


def can_fuse(x: torch.Tensor, bn: nn.Module) -> bool:
    """Whether kernels.c computes this block: on the CPU, channels-last, fp32 or bf16, a
    plain BatchNorm; in eval only where no gradient is wanted (it has no backward there)."""
    if _traced():  # first: a tracer would record the shape tests below
        return False
    wants_grad = torch.is_grad_enabled() and (x.requires_grad or bn.weight.requires_grad)
    return (
        x.device.type == "cpu"
        and x.dim() == 4
        and (bn.training or not wants_grad)
        and x.shape[1] <= MAX_TILE
        and x.dtype in (torch.float32, torch.bfloat16)  # what kernels.c reads
        and x.is_contiguous(memory_format=torch.channels_last)
        and type(bn) is nn.BatchNorm2d
        and bn.affine
        and bn.track_running_stats
        and bn.weight.dtype == bn.running_mean.dtype == torch.float32
        and kernels() is not None
    )


def norm_block(
    z: torch.Tensor, bn: nn.BatchNorm2d, *, pre_relu: bool, post_relu: bool, p: float
) -> torch.Tensor:
    """`bn` on channels-last `z` with the ReLU before and/or after it and a dropout of rate p
    (0: none). Training updates `bn`'s running statistics as torch does; eval uses them."""
    if not bn.training:
        block = _block(z, bn, pre_relu, post_relu, train=False, keep=1.0)
        y, scale_shift = torch.empty_like(z), torch.empty(2, block.T)
        kernels().nb_forward(
            block,
            _ptr(z),
            _ptr(y),
            None,
            None,
            0,
            _ptr(bn.weight),
            _ptr(bn.bias),
            _ptr(bn.running_mean),
            _ptr(bn.running_var),
            0.0,
            _ptr(scale_shift),
            None,
        )
        return y
    hits = dropout_positions(z, p) if p > 0 else None
    keep = 1 / (1 - p) if p > 0 else 1.0
    return _NormBlock.apply(z, bn.weight, bn.bias, bn, pre_relu, post_relu, keep, hits)


# ---------------------------------------------------------------- the 2x2 max-pool


class _MaxPool(torch.autograd.Function):
    """torch's 2x2, stride-2 max-pool on a channels-last map, winners kept as a byte each."""

    @staticmethod
    def forward(ctx, x):
        n, c, h, w = x.shape
        out = torch.empty(n, c, h // 2, w // 2, dtype=x.dtype, memory_format=torch.channels_last)
        code = torch.empty(out.numel(), dtype=torch.uint8)
        kernels().mp_forward(
            _ptr(x), _ptr(out), _ptr(code), n, h, w, c, x.element_size(), torch.get_num_threads()
        )
        ctx.save_for_backward(code)
        ctx.shape = x.shape
        return out

    @staticmethod
    def backward(ctx, grad):
        (code,) = ctx.saved_tensors
        n, c, h, w = ctx.shape
        grad = grad.contiguous(memory_format=torch.channels_last)
        grad_in = torch.empty(n, c, h, w, dtype=grad.dtype, memory_format=torch.channels_last)
        kernels().mp_backward(
            _ptr(grad), _ptr(code), _ptr(grad_in), n, h, w, c, grad.element_size(), torch.get_num_threads()
        )
        return grad_in


def can_pool(x: torch.Tensor, pool: nn.MaxPool2d) -> bool:
    """Whether kernels.c's max-pool computes `pool` on x: 2x2, stride 2, no padding, on the
    CPU in channels-last, fp32 or bf16."""
    if _traced():  # first: a tracer would record the shape tests below
        return False
    return (
        x.device.type == "cpu"
        and x.dim() == 4
        and x.dtype in (torch.float32, torch.bfloat16)
        and x.shape[2] >= 2
        and x.shape[3] >= 2
        and x.is_contiguous(memory_format=torch.channels_last)
        and not pool.return_indices
        and not pool.ceil_mode
        and all(v in (2, (2, 2)) for v in (pool.kernel_size, pool.stride))
        and pool.padding in (0, (0, 0))
        and pool.dilation in (1, (1, 1))
        and kernels() is not None
    )


def max_pool(x: torch.Tensor) -> torch.Tensor:
    return _MaxPool.apply(x)


# ---------------------------------------------------------------- the epoch's augmentation


def can_augment(images: torch.Tensor, cfg: Augment) -> bool:
    """Whether kernels.c augments these images: uint8 images on the CPU, the seed's affine
    warp and colour jitter (an elastic field runs torch's ops)."""
    return (
        images.device.type == "cpu"
        and images.dtype == torch.uint8
        and images.is_contiguous()
        and images.shape[-1] * images.shape[-2] <= 4096
        and not cfg.elastic
        and kernels() is not None
    )


def augment_images(
    images: torch.Tensor,
    index: torch.Tensor,
    cfg: Augment,
    params: dict[str, torch.Tensor] | None,
    out: torch.Tensor,
    mean: float,
    std: float,
) -> None:
    """out[i] = (augment(images[index[i]] / 255) - mean) / std, with the parameters `params`
    (from `augment.draw`): augment.py's warp and jitter, one pass an image (kernels.c)."""
    h, w = images.shape[-2:]
    assert out.is_contiguous() and out.dtype == torch.float32 and out.numel() == len(index) * h * w
    index = index.contiguous()
    theta = inverse_affine(params).float().contiguous() if params is not None and cfg.geometric else None
    jitter = (
        [params[k].float().contiguous() for k in ("brightness", "contrast")]
        + [params["brightness_first"].to(torch.uint8)]
        if params is not None and cfg.photometric
        else [None, None, None]
    )
    kernels().aug_images(
        _ptr(images),
        _ptr(index),
        len(index),
        h,
        w,
        _ptr(theta),
        *(_ptr(t) for t in jitter),
        mean,
        std,
        _ptr(out),
        torch.get_num_threads(),
    )
