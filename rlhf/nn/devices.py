"""Where a job computes."""

from __future__ import annotations


def use_cpu(requested: bool) -> bool:
    """Whether a job runs on CPUs: asked for, or no GPU. On a machine without one, accelerate's
    multi-process launcher then joins the processes in a gloo group (not N lone processes)."""
    import torch

    return requested or not torch.cuda.is_available()
