"""PPO over several processes (``accelerate launch``): gloo on CPUs, NCCL on GPUs, DDP.

A run on W processes takes the same steps as one process with the same settings:

- **rollout**: each iteration's P prompts are dealt out, process r taking prompts r, r + W, …
  (:meth:`Processes.share`); every sample's seed is a hash of its prompt, so a process draws the
  responses one process would have drawn for them. Each process judges its responses and
  computes their old and reference log-probabilities, then every process receives the whole
  rollout in the one-process order (:func:`gather_rollout`): advantages, whitening and group
  baselines are computed from all of it, the same on every process;
- **update**: each minibatch of the one-process order is dealt out likewise (rows r, r + W, …);
  a process's loss is its rows' token sum over the minibatch's token count (× W, as DDP
  averages gradients over processes), so the all-reduced gradient is the one-process gradient;
  the statistics are summed over processes the same way (:meth:`Processes.token_share`);
- **evaluation**: the held-out prompts are dealt out and the judgements gathered.

Up to the order of float summation, the metrics and weights are one process's
(``tests/unit/test_ppo_processes.py`` checks it with two gloo processes, replicated and
sharded). Each process holds the reference and both reward models whole. The policy and the
value model are either replicas wrapped for DDP, or, with ``fsdp`` (``--fsdp``, or ``accelerate
launch --use_fsdp``), sharded over the processes, their gradients and AdamW states too
(:mod:`rlhf.nn.sharding`); the policy is then gathered whole once per rollout and once per
evaluation, not at every sampled token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any, TypeVar

import torch

from rlhf.ppo.rollout import Rollout

Item = TypeVar("Item")

# Rollout tensors by how they are padded to the longest across processes: (field, side).
LEFT_PADDED = ("prompt_ids", "prompt_mask")
RIGHT_PADDED = ("response_ids", "response_mask", "old_logprobs", "ref_logprobs")
PER_RESPONSE = ("scores", "helpfulness", "safety", "by_safety", "truncated")


class Processes:
    """This process's place among the run's: ``world`` processes, this one ``rank``. One
    process (``world`` 1) is the plain case: every method then returns its input."""

    def __init__(self, accelerator: Any, fsdp: bool = False):
        self.accelerator = accelerator
        self.world = accelerator.num_processes
        self.rank = accelerator.process_index
        self.main = accelerator.is_main_process
        self.device = accelerator.device
        self.sharded = fsdp and self.world > 1  # one process has nothing to shard

    def finish(self) -> None:
        """The end of the run: every process waits for the main one's last files, then all
        leave the process group together (a process leaving alone aborts in gloo)."""
        self.wait()
        if self.world > 1:
            self.accelerator.end_training()

    def share(self, items: Sequence[Item]) -> list[Item]:
        """This process's items: ``items[rank::world]``."""
        return list(items[self.rank :: self.world])

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` for training: sharded in place (then build its optimizer after this) or
        wrapped for DDP under several processes, else itself."""
        if self.sharded:
            from rlhf.nn.sharding import shard

            shard(model, self.device, self.world)
            return model
        if self.world == 1:
            return model
        return self.accelerator.prepare_model(model, device_placement=False)

    def wait(self) -> None:
        """Every process waits for the others here."""
        if self.world > 1:
            self.accelerator.wait_for_everyone()

    def gather_objects(self, items: list[Item], total: int) -> list[Item]:
        """Every process's ``share`` of a list of ``total`` items, back in the list's order."""
        if self.world == 1:
            return items
        from accelerate.utils import gather_object

        shares = gather_object([items])  # one list per process, in rank order
        merged: list[Any] = [None] * total
        for rank, share in enumerate(shares):
            merged[rank :: self.world] = share
        return merged

    def token_share(self, local_tokens: torch.Tensor, global_tokens: torch.Tensor) -> float:
        """What a token mean over this process's rows is weighted by so that the sum over
        processes is the mean over all rows: ``local / global`` (1 for one process)."""
        if self.world == 1:
            return 1.0
        return float(local_tokens) / float(global_tokens)

    def sum(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each value summed over the processes (itself for one process)."""
        if self.world == 1:
            return values
        names = list(values)
        stacked = torch.stack([values[name].detach().float().reshape(()) for name in names])
        total = self.accelerator.reduce(stacked.to(self.device), reduction="sum")
        return {name: total[i] for i, name in enumerate(names)}


def gather_rollout(local: Rollout, processes: Processes, prompts: Sequence[Any]) -> Rollout:
    """The whole rollout of ``prompts`` on every process, in the one-process order, from each
    process's rollout of its :meth:`Processes.share` of them. Each process's share must hold
    as many prompts (the rollout batch a multiple of the processes)."""
    if processes.world == 1:
        return local
    from accelerate.utils import gather, pad_across_processes

    k = local.group_size
    order = _one_process_order(len(prompts), processes.world, k)
    values: dict[str, Any] = {}
    for name in LEFT_PADDED + RIGHT_PADDED + PER_RESPONSE:
        tensor = getattr(local, name)
        if name in LEFT_PADDED + RIGHT_PADDED:
            # Padding is masked out: its value is never read (0 is a token id of any vocabulary).
            tensor = pad_across_processes(tensor, dim=1, pad_index=0, pad_first=name in LEFT_PADDED)
        values[name] = gather(tensor.contiguous())[order.to(tensor.device)]
    rows = len(prompts) * k
    for name in ("responses", "seeds"):
        per_prompt = [getattr(local, name)[i : i + k] for i in range(0, len(local.seeds), k)]
        values[name] = [
            x for group in processes.gather_objects(per_prompt, len(prompts)) for x in group
        ]
    assert len(values["seeds"]) == rows
    values["prompts"] = list(prompts)
    values["group_size"] = k
    values["times"] = local.times  # this process's clock
    return Rollout(**{f.name: values[f.name] for f in fields(Rollout)})


def _one_process_order(prompts: int, world: int, k: int) -> torch.Tensor:
    """Row indices that put the gathered rows (process 0's prompts 0, W, 2W, … then process 1's
    …, K rows each) back in prompt order."""
    per_process = prompts // world
    order = []
    for prompt in range(prompts):
        rank, index = prompt % world, prompt // world
        first = (rank * per_process + index) * k
        order.extend(range(first, first + k))
    return torch.tensor(order)


__all__ = ["Processes", "gather_rollout"]
