"""A model's size comes from options and files a user hands in; it is checked before memory is spent on it.

The model is first built on the meta device, which allocates nothing, and its construction is stopped once it
registers more than MAX_TENSORS tensors or MAX_PARAMETERS values, so a claim of hidden=100000 or layers=10**9
costs neither memory nor time. What it would hold is then counted (check_size, for options) or compared with
a file's tensor header (check_fits, before a file's weights are loaded: the model then holds what the file holds,
so loading uses memory bounded by the file's size).
"""

from __future__ import annotations

import math
import os
from typing import Callable

import torch
import torch.nn as nn
from torch.nn.modules import module as _module
from torch.overrides import TorchFunctionMode

from vqgen.errors import CheckpointError, OptionError, VqgenError

MAX_PARAMETERS = 2**31  # values in a model's parameters and buffers: 8 GiB in fp32, ~100x the largest here
MAX_TENSORS = 10_000  # the default VQ-VAE has 40, a 100-layer transformer ~1,200


class _TooLarge(Exception):
    pass


# A meta tensor holds no values, yet many ops on one (nn.Embedding's normal_, torch.randn, a division) run through
# torch's Python reference ops, whose first calls import torch._dynamo and sympy: ~1-2 s of every command's start.
# A model's build needs only its tensors' shapes, so _ShapesOnly answers those ops itself: initialisers leave the
# tensor as it is, random tensors are empty ones, and elementwise arithmetic on tensors of one shape (or a tensor
# and numbers) gives an empty tensor of that shape. Any other op runs as torch would run it.
_INITIALISERS = frozenset({"normal_", "uniform_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_",
                           "xavier_uniform_", "xavier_normal_", "orthogonal_", "constant_", "zeros_", "ones_",
                           "fill_", "zero_", "copy_"})
_ELEMENTWISE = frozenset({"clone", "detach", "contiguous", "neg", "abs", "sqrt", "exp", "log", "div", "mul",
                          "add", "sub", "pow", "__neg__", "__truediv__", "__rtruediv__", "__mul__", "__rmul__",
                          "__add__", "__radd__", "__sub__", "__rsub__", "__pow__"})


class _ShapesOnly(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _INITIALISERS:
            tensor = args[0] if args else kwargs.get("tensor")  # nn.init passes it by keyword
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
        elif name in ("randn", "rand") and set(kwargs) <= {"dtype", "device"} and \
                kwargs.get("device") in (None, "meta"):  # None: the meta device planned() builds under
            return torch.empty(*args, dtype=kwargs.get("dtype"), device="meta")
        elif name in _ELEMENTWISE and not kwargs and args:
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            first = tensors[0] if tensors else None
            if first is not None and all(t.is_meta and t.shape == first.shape for t in tensors) and \
                    all(isinstance(a, (torch.Tensor, int, float, bool)) for a in args):
                dtype = torch.result_type(*args[:2]) if len(args) > 1 else first.dtype
                return torch.empty(first.shape, dtype=dtype, device="meta")
        return func(*args, **kwargs)


def planned(factory: Callable[[], nn.Module]) -> dict[str, tuple[tuple[int, ...], torch.dtype]] | None:
    """{name: (shape, dtype)} of the state dict factory() would have, built on the meta device; raises _TooLarge
    past MAX_TENSORS tensors or MAX_PARAMETERS values. None for a model that cannot be built there (a plugin
    reading its own weights' values while it is built): the real build then goes unchecked."""
    count = {"tensors": 0, "values": 0}

    def seen(_module_, _name, t):
        if t is not None:
            count["tensors"] += 1
            count["values"] += t.numel()
            if count["tensors"] > MAX_TENSORS or count["values"] > MAX_PARAMETERS:
                raise _TooLarge
        return None

    hooks = [_module.register_module_parameter_registration_hook(seen),
             _module.register_module_buffer_registration_hook(seen)]
    try:
        with torch.device("meta"), _ShapesOnly():
            model = factory()
    except (_TooLarge, VqgenError):
        raise
    except Exception:
        return None
    finally:
        for h in hooks:
            h.remove()
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def _count(shapes: dict) -> int:
    return sum(math.prod(s) for s, _ in shapes.values())


def check_size(factory: Callable[[], nn.Module], what: str, option: str) -> None:
    """Refuse (misuse: OptionError naming `option`) a model of more than MAX_PARAMETERS values; `what` says which
    model, naming its options ("the pixelcnn prior of {prior_options.channels=1000000}")."""
    try:
        shapes = planned(factory)
    except _TooLarge:
        shapes, n = None, None
    else:
        if shapes is None:
            return
        n = _count(shapes)
    if n is None or n > MAX_PARAMETERS:
        has = "exceed" if n is None else f"have {n:,} parameters, over"
        raise OptionError(f"{what} would {has} the {MAX_PARAMETERS:,} parameters (in at most {MAX_TENSORS:,} "
                          f"tensors) vqgen builds: choose smaller sizes", option, n,
                          f"at most {MAX_PARAMETERS:,} parameters")


def check_fits(factory: Callable[[], nn.Module], header: dict, path: str | os.PathLike, what: str) -> None:
    """Refuse (CheckpointError naming the file) weights whose tensors, as the file's header lists them, are not
    the ones factory() would hold, before anything is allocated."""
    try:
        want = planned(factory)
    except _TooLarge:
        raise CheckpointError(f"{path}: its {what} config describes a model far larger than the "
                              f"{len(header)} tensors the file holds; the file is corrupt") from None
    if want is None:
        return
    have = {k: tuple(v.get("shape", ())) for k, v in header.items()}
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    if missing or extra:
        which = f"needs the tensor {missing[0]}, which the file lacks" if missing else \
            f"has no place for the file's tensor {extra[0]}"
        raise CheckpointError(f"{path}: weights do not match their config (the {what} it describes {which})")
    for k, (shape, _) in want.items():
        if have[k] != shape:
            raise CheckpointError(f"{path}: weights do not match their config (the {what} it describes needs {k} "
                                  f"of shape {list(shape)}, the file holds {list(have[k])})")
