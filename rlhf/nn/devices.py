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


# glibc's mallopt parameters (malloc.h); their values are C ints
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEPT_BLOCK_BYTES = 1 << 30  # freed blocks up to this size stay in the process
KEPT_HEAP_BYTES = (1 << 31) - 1  # free memory at the heap's top above this goes back


def keep_freed_memory(device) -> bool:
    """Let a training process on CPUs (``device``, a ``torch.device``) reuse the memory of the
    tensors it frees instead of handing it back to the system; whether that applied (CPUs and
    glibc only: Linux, not musl or macOS).

    glibc serves every block above its mmap threshold (32 MiB at most, by default) with a fresh
    mapping and unmaps it when freed, so the next block of that size is faulted in again a
    4 KiB page at a time, each zero-filled by the kernel. A training step frees and allocates
    large tensors of about the same sizes every time (SmolLM2's 113 MB embedding gradient, the
    logits). Raising the mmap threshold to :data:`KEPT_BLOCK_BYTES` and the trim threshold to
    :data:`KEPT_HEAP_BYTES` keeps such blocks in the heap for the next step, as a GPU's caching
    allocator does: SmolLM2's SFT steps on two CPU cores ran 8-17 % faster. The price: the
    process's resident memory stays near its peak (there: 3.5 GB instead of 3.0, steady over
    the steps). The setting is the whole process's, from the call on; it governs the main
    heap, where the training loop allocates (other threads' heaps still map blocks above
    64 MiB). False also where an older glibc refuses a threshold above 32 MiB.
    """
    import ctypes
    import platform

    if device.type != "cpu" or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, KEPT_BLOCK_BYTES)
        and libc.mallopt(_M_TRIM_THRESHOLD, KEPT_HEAP_BYTES)
    )
