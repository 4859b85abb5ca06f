"""The PyTorch bridge of the simulator: one ``torch.autograd.Function`` per segment of K substeps.

Its forward keeps only the segment's start state and runs the engine; its backward re-simulates the
segment (storing the K intermediate particle states), then walks back through it with the adjoint
kernels (``Engine.backward_segment``).  Memory is O(N (T/K + K)) and the gradient is exact over the
whole horizon.  A segment told to ``keep`` its tape records it during the forward pass instead, and
its backward pass walks back through that without re-simulating (one forward pass fewer, for the
memory of every substep; ``simulate`` decides which segments keep, within a byte budget).  Both
paths run the same kernels on the same inputs, so their gradients are the same.  Layers, top-down:
``simulate`` -> this module -> ``solver.Engine`` -> kernels.
"""

from __future__ import annotations

from typing import Sequence

import torch

from . import layout as L
from .layout import pack_state, unpack_state
from .solver import Engine, StepParams


class _Segment(torch.autograd.Function):
    """``count`` substeps from ``start``: (x, v, C, F, material, friction, damping) -> (end state, recorded frames)."""

    @staticmethod
    def forward(ctx, engine: Engine, start: int, count: int, record: tuple, keep: list | None, x, v, C, F, material,
                friction, damping):
        # Taichi looks at ``.grad`` of tensors that require grad: hand it plain data.
        S0 = pack_state(x.detach(), v.detach(), C.detach(), F.detach())
        P = StepParams(material.detach().contiguous(), friction.detach().contiguous(), damping.detach().contiguous())
        ctx.tape = None
        if keep is not None and any(ctx.needs_input_grad[5:]):
            ctx.tape = engine.record_segment(S0, P, start, count, scratch=False)
            keep.append(ctx.tape.nbytes())
            S_end = ctx.tape.states[count].clone()
            frames = [ctx.tape.states[j] for j in record]
        else:
            S_end, frames = engine.run(S0, P, start, count, record)
        ctx.engine, ctx.start, ctx.count, ctx.record = engine, start, count, record
        ctx.save_for_backward(x, v, C, F, material, friction, damping)
        n = x.shape[0]
        if frames:
            stacked = torch.stack(frames)
            frames_x = stacked[:, :, L.X : L.X + 3].clone()
            frames_F = stacked[:, :, L.F : L.F + 9].reshape(len(frames), n, 3, 3).clone()
        else:
            frames_x, frames_F = x.new_zeros((0, n, 3)), x.new_zeros((0, n, 3, 3))
        return (*unpack_state(S_end), frames_x, frames_F)

    @staticmethod
    def backward(ctx, gx, gv, gC, gF, gfx, gfF):
        x, v, C, F, material, friction, damping = ctx.saved_tensors
        engine = ctx.engine
        n, k = x.shape[0], len(ctx.record)

        def z(g, ref):
            return torch.zeros_like(ref) if g is None else g

        G_end = pack_state(z(gx, x), z(gv, v), z(gC, C), z(gF, F))
        G_frames = None
        if k:
            G_frames = torch.zeros(k, n, L.STATE_DIM, dtype=x.dtype, device=x.device)
            if gfx is not None:
                G_frames[:, :, L.X : L.X + 3] = gfx
            if gfF is not None:
                G_frames[:, :, L.F : L.F + 9] = gfF.reshape(k, n, 9)
        S0 = pack_state(x.detach(), v.detach(), C.detach(), F.detach())
        P = StepParams(material, friction, damping)
        G0, GP = engine.backward_segment(S0, P, ctx.start, ctx.count, ctx.record, G_end, G_frames, tape=ctx.tape)
        ctx.tape = None
        return (None, None, None, None, None, *unpack_state(G0), GP.material, GP.friction, GP.damping)


def run_segment(engine: Engine, start: int, count: int, record: Sequence[int], state: Sequence[torch.Tensor],
                material, friction, damping, keep: list | None = None):
    """Differentiable segment (see :class:`_Segment`): returns ``(x, v, C, F, frames_x, frames_F)``.

    With a list ``keep``, the forward pass keeps the segment's tape for the backward pass when a
    gradient will be needed, and appends its size in bytes to ``keep``."""
    return _Segment.apply(engine, start, count, tuple(record), keep, *state, material, friction, damping)
