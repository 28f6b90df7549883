"""Where a job computes."""

from __future__ import annotations

import os


def use_cpu(requested: bool) -> bool:
    """Whether a job runs on CPUs: asked for, or no GPU. On a machine without one, accelerate's
    multi-process launcher then joins the processes in a gloo group (not N lone processes)."""
    import torch

    return requested or not torch.cuda.is_available()


def fsdp_launched() -> bool:
    """Whether ``accelerate launch --use_fsdp`` started this process."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("true", "1")


def check_fsdp_device(requested_cpu: bool) -> None:
    """Refuse ``accelerate launch --use_fsdp`` for a run on CPUs, with what to launch instead:
    accelerate shards nothing there, and transformers would have loaded every process but the
    first on the meta device, which fails deep inside DDP."""
    if fsdp_launched() and use_cpu(requested_cpu):
        raise ValueError(
            "accelerate launch --use_fsdp needs GPUs; on CPUs launch the processes with "
            "--multi_gpu --num_processes N (a gloo group)"
        )
