"""Running a ``transformers`` model's attention through a function of ours, for a while.

``transformers`` reads ``config._attn_implementation`` at every attention call and looks the
name up among the registered attention functions; it builds no mask for a name without a mask
function (our functions take what they need as keywords of the forward instead).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def attention_of(model, name: str, function: Callable) -> Iterator[None]:
    """Within the block, ``model`` runs its attention through ``function``, registered with
    ``transformers`` as ``name``; its own implementation comes back at the end."""
    from transformers import AttentionInterface

    AttentionInterface.register(name, function)
    config = model.config
    previous = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = previous


__all__ = ["attention_of"]
