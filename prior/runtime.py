"""Where a frozen prior runs and in what precision, decided by accelerate.

A prior is never ``accelerator.prepare()``d: that would wrap it for training (DDP, gradient
sync, fp32 master weights).  It is frozen, placed on accelerate's device (or on an accelerator the
caller already has, e.g. the fit pipeline's), optionally offloaded to CPU between layers with
``accelerate.cpu_offload`` and run under autocast.

Measured on this project's CPU: bf16 autocast is real on CPU, but fp16 autocast on CPU silently
runs fp32 under accelerate - so fp16 on CPU is refused here instead of pretending.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Literal

import torch
from torch import nn

Precision = Literal["fp32", "bf16", "fp16"]
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """Device and precision of a frozen prior.

    device: ``"auto"`` (accelerate's choice: the local process's GPU when there is one, else CPU)
    or a torch device string.  precision: autocast dtype for the prior's forward passes.
    half_weights: store the weights in ``precision`` too (GPU only; halves memory).
    offload: keep weights on CPU and stream them to the GPU layer by layer (``accelerate.cpu_offload``).
    """

    device: str = "auto"
    precision: Precision = "fp32"
    half_weights: bool = True
    offload: bool = False


@dataclasses.dataclass(frozen=True)
class Runtime:
    """A resolved :class:`RuntimeConfig`: the device, the weight dtype and the autocast to use."""

    device: torch.device
    precision: Precision
    weight_dtype: torch.dtype
    offload: bool
    accelerator: object | None = None

    @staticmethod
    def resolve(config: RuntimeConfig = RuntimeConfig(), accelerator=None) -> "Runtime":
        """Resolve ``config``; an existing ``accelerate.Accelerator`` fixes device and precision."""
        if accelerator is not None:
            device = accelerator.device
            precision = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}.get(str(accelerator.mixed_precision), "fp32")
        else:
            from accelerate import PartialState

            device = PartialState().device if config.device == "auto" else torch.device(config.device)
            precision = config.precision
        if precision not in _DTYPES:
            raise ValueError(f"precision must be one of {', '.join(_DTYPES)}, got {precision!r}")
        if device.type == "cpu" and precision == "fp16":
            raise ValueError("fp16 does not run on CPU (autocast silently stays fp32); use bf16 or fp32")
        on_gpu = device.type == "cuda"
        weight_dtype = _DTYPES[precision] if (on_gpu and config.half_weights) else torch.float32
        if config.offload and not on_gpu:
            raise ValueError("offload streams weights to a GPU; it needs a CUDA device")
        return Runtime(device, precision, weight_dtype, config.offload and on_gpu, accelerator)

    @property
    def compute_dtype(self) -> torch.dtype:
        return _DTYPES[self.precision]

    def autocast(self):
        """Context manager for the prior's forward passes."""
        if self.accelerator is not None:
            return self.accelerator.autocast()
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.compute_dtype)

    def place(self, model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
        """Freeze ``model`` and put it where it runs (offloaded or moved, in ``dtype`` or ``weight_dtype``)."""
        freeze(model)
        dtype = dtype or self.weight_dtype
        if any(p.dtype != dtype for p in model.parameters()):
            model.to(dtype=dtype)
        if self.offload:
            from accelerate import cpu_offload

            cpu_offload(model, execution_device=self.device)
        else:
            model.to(self.device)
        return model


def freeze(model: nn.Module) -> nn.Module:
    """Evaluation mode and no parameter gradients: a prior is a fixed function of its input."""
    model.eval()
    model.requires_grad_(False)
    return model
