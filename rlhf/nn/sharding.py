"""Fully sharded models (PyTorch's FSDP2, ``fully_shard``) for a loop that samples and trains.

Sharded over W processes, a model's weights, its gradients and its optimizer's state take 1/W
of the memory on each: what lets a policy, its value model and their AdamW states (four times
the weights in float32) fit where replicas (DDP) would not. A forward pass gathers each
decoder layer's weights just before it runs and frees them after it.

Sampling is where that would hurt: a response of N tokens is N forward passes, so every layer
would be gathered N times. :func:`gathered` gathers the whole model once, keeps it through
every forward in the block, and shards it again at the end: a rollout costs one all-gather, as
in veRL's and OpenRLHF's FSDP rollouts without an inference engine, and while it is gathered no
forward pass communicates, so processes may run different numbers of decoding steps.

Checkpoints hold whole (unsharded) weights and optimizer states, by parameter name
(:func:`full_state` and :func:`load_full_state`, through ``torch.distributed.checkpoint``):
the same files for a sharded model, a DDP replica and a single process.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def shard(model: torch.nn.Module, device: torch.device, world: int) -> None:
    """Shard ``model`` in place over the ``world`` processes: each decoder layer (the classes
    ``transformers`` names in ``_no_split_modules``, of the model or of a model inside it, as a
    value model's backbone) as its own unit, then the rest."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world,))
    layer_classes = {
        name
        for module in model.modules()
        for name in getattr(module, "_no_split_modules", ()) or ()
    }
    for module in model.modules():
        if module is not model and type(module).__name__ in layer_classes:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)


def sharded_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [module for module in model.modules() if isinstance(module, FSDPModule)]


@contextmanager
def gathered(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, ``model``'s weights are whole on every process (nothing to do for a
    model that is not sharded). Every process enters and leaves the block together."""
    units = sharded_modules(model)
    if not units:
        yield
        return
    with torch.no_grad():  # the gathered weights must not be inference tensors: training follows
        for unit in units:
            unit.unshard()
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True, recurse=False)


def full_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict[str, Any]:
    """The model's whole weights and, if given, the optimizer's whole state, by parameter
    name, on the CPU of the main process (empty on the others). Every process calls it."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = {"model": get_model_state_dict(model, options=options)}
    if optimizer is not None:
        state["optimizer"] = get_optimizer_state_dict(model, optimizer, options=options)
    return state


def load_full_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Put a :func:`full_state` back, each process taking its shard. Every process calls it
    with the whole state."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, state["model"], options=options)
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=options)


__all__ = ["full_state", "gathered", "load_full_state", "shard", "sharded_modules"]
