"""Sharded data parallelism (``train.strategy=fsdp``), activation checkpointing and sharded
checkpoints, in plain PyTorch: FSDP2 (``torch.distributed.fsdp.fully_shard``) and
``torch.distributed.checkpoint`` (DCP). Ray Train only starts the process group.

Memory per worker for a model of P parameters trained with AdamW in fp32 (weights 4 bytes,
gradients 4, two moments 8: 16 bytes per parameter, before activations): ``ddp`` holds all 16P
on every worker; ``fsdp`` over W workers holds 16P/W, plus one block's full weights while it
computes. docs/training.md has the arithmetic for the published scorers.

Layout of a sharded checkpoint directory: the DCP files (``__<rank>_0.distcp`` from every
rank and ``.metadata``) under ``sharded/``, holding the model and optimiser state (and any
half-accumulated gradients); ``state.pt`` from rank 0 with the progress, the scheduler and the
config. DCP reshards on load, so a run resumes on any number of workers.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable

import torch
from torch import nn

SHARDED_DIR = "sharded"


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The blocks FSDP shards one by one (and activation checkpointing wraps): the children
    of the outermost ``Sequential``/``ModuleList`` that holds two or more blocks with
    parameters (a CNN's conv blocks, a transformer's layers), wherever it sits in the model."""
    units: list[nn.Module] = []

    def has_params(m: nn.Module) -> bool:
        return any(True for _ in m.parameters())

    def visit(m: nn.Module) -> None:
        if isinstance(m, (nn.Sequential, nn.ModuleList)):
            blocks = [c for c in m.children() if has_params(c)]
            if len(blocks) >= 2:
                units.extend(blocks)
                return
        for child in m.children():
            visit(child)

    visit(model)
    return units


def fully_shard_model(model: nn.Module, device: torch.device) -> nn.Module:
    """FSDP2: each block of ``shard_units`` sharded, then the root (the head and whatever is
    outside the blocks). On GPU, bf16 compute with fp32 gradient reduction; on CPU fp32
    (gloo). The module keeps its class and parameter names; its parameters become ``DTensor``
    shards."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
          if device.type == "cuda" else MixedPrecisionPolicy())
    for unit in shard_units(model):
        fully_shard(unit, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


@contextlib.contextmanager
def _frozen_batchnorm_stats(module: nn.Module):
    """While a checkpointed block is recomputed in the backward pass, its BatchNorm layers
    must not update their running statistics a second time (momentum 0 leaves them as the
    forward pass set them)."""
    saved = [(m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
             for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m, _, _ in saved:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def checkpoint_activations(units: Iterable[nn.Module]) -> int:
    """Recompute each unit's activations in the backward pass instead of storing them
    (``torch.utils.checkpoint``, non-reentrant). The module tree and its state-dict keys do
    not change. Returns how many units were wrapped."""
    from torch.utils.checkpoint import checkpoint

    n = 0
    for unit in units:
        forward = unit.forward

        def checkpointed(*args, _forward=forward, _unit=unit, **kwargs):
            if not torch.is_grad_enabled():
                return _forward(*args, **kwargs)
            return checkpoint(_forward, *args, use_reentrant=False,
                              context_fn=lambda u=_unit: (contextlib.nullcontext(),
                                                         _frozen_batchnorm_stats(u)),
                              **kwargs)

        unit.forward = checkpointed
        n += 1
    return n


def local_numel(tensors: Iterable[torch.Tensor]) -> int:
    """Elements this process holds of ``tensors`` (a ``DTensor``'s local shard only)."""
    total = 0
    for t in tensors:
        local = t.to_local() if hasattr(t, "to_local") else t
        total += local.numel()
    return total


def memory_report(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """What this process holds, counted from its tensors (not assumed from the strategy):
    parameter elements held locally and in the whole model, and optimiser-state elements
    held locally (AdamW's two moments; 0 before the first step)."""
    params = list(model.parameters())
    state = [v for s in optimizer.state.values() for v in s.values()
             if isinstance(v, torch.Tensor) and v.dim() > 0]
    return {"memory/params_local": float(local_numel(params)),
            "memory/params_total": float(sum(p.numel() for p in params)),
            "memory/optimizer_state_local": float(local_numel(state))}


def save_sharded(directory: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                 pending_grads: bool = False) -> str:
    """Every rank writes its shard of the model and optimiser state (and, mid-accumulation,
    of the gradients) to ``directory/sharded`` with DCP; a collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    if pending_grads:
        state["grads"] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    path = os.path.join(directory, SHARDED_DIR)
    dcp.save(state, checkpoint_id=path)
    return path


def load_sharded(directory: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                 pending_grads: bool = False) -> None:
    """Load ``directory/sharded`` into this rank's shards, resharding to however many ranks
    run now; a collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    if pending_grads:
        state["grads"] = {n: torch.zeros_like(p) for n, p in model.named_parameters()
                          if p.requires_grad}
    dcp.load(state, checkpoint_id=os.path.join(directory, SHARDED_DIR))
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])
    if pending_grads:
        params = dict(model.named_parameters())
        for name, grad in state["grads"].items():
            params[name].grad = grad


def full_model_state(directory: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights from a sharded checkpoint, read in one process (the driver,
    after training): ``model`` (built as the workers built it, before sharding) says which
    tensors to read; the optimiser state is not read."""
    import torch.distributed.checkpoint as dcp

    state = {"model": {k: v.clone() for k, v in model.state_dict().items()}}
    dcp.load(state, checkpoint_id=os.path.join(directory, SHARDED_DIR), no_dist=True)
    return state["model"]


def is_sharded(directory: str) -> bool:
    return os.path.isdir(os.path.join(directory, SHARDED_DIR))
