"""Batched sampling from a causal language model: many prompts, one decoding loop.

``sample(model, tokenizer, prompt_token_ids, params)`` completes B prompts of different lengths
together, each with its own temperature, top-p, length limit and seed:

- the prompts are left-padded to a common length P (attention mask 0 on the padding, position
  ids counting from 0 at each row's first real token), so that every row's next token sits in
  the last column;
- one forward pass over the (B, P) prompts fills the KV cache (prefill), then one forward pass
  per step feeds the (B, 1) tokens just chosen, reusing the cache;
- temperature and top-p are applied to all rows at once; a row with temperature 0 is greedy;
- randomness is per row: each row's uniforms come from its own ``torch.Generator`` seeded with
  the row's seed, drawn on the CPU before decoding starts. A row's tokens therefore depend on its
  prompt, parameters and seed only, not on the other rows of the batch nor on the device's RNG;
- a row that emits EOS is finished ("stop"), one that reaches its ``max_new_tokens`` too
  ("length"); finished rows are fed padding, their extra tokens are not reported, and the loop
  ends when every row is finished.

Completions include the EOS token that ended them (it was generated, and counts as a token).

The KV cache is preallocated (:class:`PreallocatedLayer`) for models with plain full-attention
caches, so that a step does not copy the whole cache; other models keep the cache their forward
creates. With ``group_size`` K, the K rows of a prompt share its prefill. How the steps attend
(:class:`SharedPrefixSteps` or :class:`ModelSteps`):

- on a CPU, for a model whose attention goes through ``transformers``' interface and whose
  cache is preallocated, the prefill's cache stays one row per prompt and each row's cache
  holds only its new tokens; a step's one query per row attends to both
  (:mod:`rlhf.nn.decode_attention`, each prompt's keys read once for its K rows);
- otherwise (GPUs, whose SDPA kernels are fast at one query; other models) the prefill's cache
  is repeated K times and the model attends through its own implementation with a (B, P + N)
  mask preallocated for the whole run.

Batch independence holds exactly in exact arithmetic. In floating point the kernels reduce in
an order that depends on the shapes (BLAS picks other code paths for few rows; attention sums
over the padded key range), so a row's logits alone and in a batch agree to about 1e-7 of their
size (float32), not bit for bit. The chosen tokens agree unless two candidates, or a uniform
and a cumulative probability, are that close: the tests see identical tokens.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from rlhf.nn import decode_attention

SEED_BOUND = 2**63  # seeds are drawn in [0, 2**31) and accepted in [0, 2**63)


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one completion. ``temperature`` 0 means greedy (then top-p is unused)."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 256
    seed: int | None = None

    def __post_init__(self):
        if not (isinstance(self.temperature, int | float) and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number, got {self.temperature!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not (isinstance(self.top_p, int | float) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise ValueError(f"max_new_tokens must be an integer, got {self.max_new_tokens!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.seed is not None and (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, int)
            or not 0 <= self.seed < SEED_BOUND
        ):
            raise ValueError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")


@dataclass(frozen=True)
class Completion:
    """The new tokens of one row (EOS included when it ended the row), why it ended, its seed,
    and, when asked for (``sample(..., with_logprobs=True)``; else empty), each new token's
    log-probability under the model itself (temperature 1, no top-p: the policy's log π, what
    PPO's ratio and KL read), from the logits it was drawn from."""

    token_ids: list[int]
    finish_reason: str  # "stop": emitted EOS; "length": reached max_new_tokens
    seed: int
    # Not compared: the same tokens drawn in another batch carry log-probabilities that differ
    # in float rounding.
    logprobs: list[float] = field(default_factory=list, compare=False)


def sample(
    model,
    tokenizer,
    prompt_token_ids: Sequence[Sequence[int]],
    params: Sequence[SamplingParams],
    *,
    group_size: int = 1,
    with_logprobs: bool = False,
    on_step: Callable[[int, int], None] | None = None,
) -> list[Completion]:
    """Complete every prompt (token ids, BOS included if the model wants one) in one batch.

    ``group_size`` K > 1: K completions of each prompt, rows ``i*K … i*K+K-1`` for prompt i,
    with ``params`` given per row (P·K of them); each prompt is prefilled once and its KV cache
    shared by its K rows (rejection sampling's best-of-K, GRPO's groups). ``on_step(step,
    steps)`` is called after each decoding step that fed the model, for progress reports
    (``step`` of at most ``steps``; fewer when every row stops early).
    """
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
    if len(prompt_token_ids) * group_size != len(params):
        raise ValueError(
            f"{len(prompt_token_ids)} prompts × {group_size} but {len(params)} SamplingParams"
        )
    if not prompt_token_ids:
        return []
    if any(len(ids) == 0 for ids in prompt_token_ids):
        raise ValueError("every prompt needs at least one token")
    seeds = [p.seed if p.seed is not None else secrets.randbelow(2**31) for p in params]
    eos_ids = eos_token_ids(model, tokenizer)
    with torch.inference_mode():
        rows = RowSettings.build(params, seeds, model_device(model))
        tokens, logprobs = decode(
            model, prompt_token_ids, rows, pad_token_id(model, tokenizer), eos_ids, group_size,
            with_logprobs, on_step,
        )  # fmt: skip
    return [
        Completion(ids, "stop" if ids[-1] in eos_ids else "length", seed, row_logprobs)
        for ids, seed, row_logprobs in zip(tokens, seeds, logprobs, strict=True)
    ]


# --- per-row settings ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RowSettings:
    """The sampling parameters of B rows as tensors on the model's device."""

    temperature: torch.Tensor  # (B,) float32, 0 for greedy rows
    top_p: torch.Tensor  # (B,) float32
    max_new_tokens: torch.Tensor  # (B,) int64
    uniforms: torch.Tensor  # (B, N) float64, N = the largest max_new_tokens; row i's own draws
    steps: int  # N

    @classmethod
    def build(cls, params: Sequence[SamplingParams], seeds: list[int], device) -> RowSettings:
        steps = max(p.max_new_tokens for p in params)
        uniforms = torch.zeros(len(params), steps, dtype=torch.float64)
        for i, (p, seed) in enumerate(zip(params, seeds, strict=True)):
            generator = torch.Generator().manual_seed(seed)
            # Exactly max_new_tokens draws per row, whatever the batch: the row's own stream.
            uniforms[i, : p.max_new_tokens] = torch.rand(
                p.max_new_tokens, generator=generator, dtype=torch.float64
            )
        return cls(
            temperature=torch.tensor([float(p.temperature) for p in params], device=device),
            top_p=torch.tensor([float(p.top_p) for p in params], device=device),
            max_new_tokens=torch.tensor([p.max_new_tokens for p in params], device=device),
            uniforms=uniforms.to(device),
            steps=steps,
        )


# --- the decoding loop ---------------------------------------------------------------------------


def decode(
    model,
    prompt_token_ids,
    rows: RowSettings,
    pad_id: int,
    eos_ids: list[int],
    group_size=1,
    with_logprobs: bool = False,
    on_step: Callable[[int, int], None] | None = None,
):
    """Run prefill and the decoding steps; return each row's own new tokens and, if asked for,
    their log-probabilities under the model (temperature 1; else empty lists)."""
    input_ids, mask = left_pad(prompt_token_ids, pad_id, rows.temperature.device)  # (B/K, P)
    # Each prompt's K rows share its prefill: its logits and positions are repeated, its KV
    # cache read once per group (a CPU: rlhf.nn.decode_attention) or repeated K times.
    shares_prefix = decode_attention.supported(model) and preallocates(model)
    capacity = input_ids.shape[1] + (0 if shares_prefix else rows.steps)
    cache, logits = prefill(model, input_ids, mask, capacity)  # logits (B/K, V)
    logits = logits.repeat_interleave(group_size, dim=0)  # (B, V)
    positions = mask.sum(dim=1).repeat_interleave(group_size)  # (B,) next token's position
    if shares_prefix:
        steps = SharedPrefixSteps(model, cache, mask, group_size, positions, rows.steps)
    else:
        steps = ModelSteps(model, cache, mask, group_size, positions, rows.steps)
    with steps.attention():
        return _decode_steps(steps, logits, rows, pad_id, eos_ids, with_logprobs, on_step)


def _decode_steps(
    steps,
    logits,
    rows: RowSettings,
    pad_id: int,
    eos_ids,
    with_logprobs: bool,
    on_step: Callable[[int, int], None] | None = None,
):
    """Choose each row's token and feed them, step by step, until every row is done."""
    batch, device = logits.shape[0], logits.device
    eos = torch.tensor(eos_ids, device=device)  # (E,)
    out = torch.full((batch, rows.steps), pad_id, dtype=torch.long, device=device)
    out_logprobs = torch.zeros((batch, rows.steps), device=device)  # (B, N) float32
    done = torch.zeros(batch, dtype=torch.bool, device=device)  # (B,)
    lengths = torch.full((batch,), rows.steps, dtype=torch.long, device=device)

    for step in range(rows.steps):
        chosen = choose_tokens(logits, rows, step)  # (B,)
        chosen = torch.where(done, pad_id, chosen)
        out[:, step] = chosen
        if with_logprobs:
            chosen_logits = logits.gather(1, chosen[:, None])[:, 0]
            out_logprobs[:, step] = chosen_logits - torch.logsumexp(logits, dim=-1)
        ends = ~done & (torch.isin(chosen, eos) | (rows.max_new_tokens <= step + 1))  # (B,)
        lengths = torch.where(ends, step + 1, lengths)
        done = done | ends
        if step + 1 == rows.steps or bool(done.all()):
            break
        logits = steps.feed(chosen, step)
        if on_step is not None:
            on_step(step + 1, rows.steps)
    lengths = lengths.tolist()
    tokens = [row[:length] for row, length in zip(out.tolist(), lengths, strict=True)]
    if not with_logprobs:
        return tokens, [[] for _ in tokens]
    logprobs = [row[:length] for row, length in zip(out_logprobs.tolist(), lengths, strict=True)]
    return tokens, logprobs


class ModelSteps:
    """Decoding steps through the model's own attention: the prefill's cache repeated for each
    prompt's K rows, the (B, P + N) attention mask preallocated, each step one more column."""

    def __init__(self, model, cache, mask, group_size: int, positions, steps: int):
        cache.batch_repeat_interleave(group_size)
        mask = mask.repeat_interleave(group_size, dim=0)
        self.model, self.cache, self.positions = model, cache, positions
        self.prompt_len = mask.shape[1]
        self.mask = torch.cat([mask, mask.new_ones(mask.shape[0], steps)], dim=1)

    def attention(self):
        return contextlib.nullcontext()

    def feed(self, tokens: torch.Tensor, step: int) -> torch.Tensor:
        """Feed the (B,) tokens chosen at ``step``; return the (B, V) next-token logits."""
        attention = self.mask[:, : self.prompt_len + step + 1]  # (B, P + step + 1)
        self.cache, logits = forward_step(
            self.model, tokens[:, None], attention, self.positions[:, None] + step, self.cache
        )
        return logits


class SharedPrefixSteps:
    """Decoding steps through :mod:`rlhf.nn.decode_attention`: the prefill's cache is each
    prompt's :class:`SharedPrefix`, read by its K rows; a new cache holds the rows' own tokens
    (no padding there, so no mask)."""

    def __init__(self, model, cache, mask, group_size: int, positions, steps: int):
        self.model, self.positions = model, positions
        self.prefix = decode_attention.SharedPrefix.of(cache, mask, group_size)
        self.cache = preallocated_cache(model, steps)

    def attention(self):
        return decode_attention.decode_attention_of(self.model)

    def feed(self, tokens: torch.Tensor, step: int) -> torch.Tensor:
        self.cache, logits = forward_step(
            self.model, tokens[:, None], None, self.positions[:, None] + step, self.cache,
            shared_prefix=self.prefix,
        )  # fmt: skip
        return logits


def left_pad(prompt_token_ids, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, P) token ids padded on the left with ``pad_id``, and the (B, P) mask of real tokens."""
    width = max(len(ids) for ids in prompt_token_ids)
    input_ids = torch.full((len(prompt_token_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompt_token_ids), width), dtype=torch.long)
    for i, ids in enumerate(prompt_token_ids):
        input_ids[i, width - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
        mask[i, width - len(ids) :] = 1
    return input_ids.to(device), mask.to(device)


def prefill(model, input_ids: torch.Tensor, mask: torch.Tensor, capacity: int):
    """Run the (B, P) prompts once; return the filled KV cache and the (B, V) next-token logits."""
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, P), 0 at each first real token
    cache = preallocated_cache(model, capacity)
    outputs = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        **({} if cache is None else {cache_argument(model): cache}),
        **last_logits_only(model),
    )
    return cache_of(outputs), outputs.logits[:, -1, :].float()


def forward_step(model, tokens, attention, positions, cache, **attention_kwargs):
    """Feed (B, 1) tokens at (B, 1) positions; return the grown cache and (B, V) next logits."""
    outputs = model(
        input_ids=tokens,
        attention_mask=attention,
        position_ids=positions,
        use_cache=True,
        **{cache_argument(model): cache},
        **attention_kwargs,
    )
    return cache_of(outputs), outputs.logits[:, -1, :].float()


# --- choosing tokens -----------------------------------------------------------------------------


def choose_tokens(logits: torch.Tensor, rows: RowSettings, step: int) -> torch.Tensor:
    """The next (B,) tokens: argmax for greedy rows, top-p sampling at temperature for others."""
    greedy = rows.temperature == 0  # (B,)
    temperature = torch.where(greedy, 1.0, rows.temperature)[:, None]  # (B, 1)
    tokens = sample_top_p(logits / temperature, rows.top_p, rows.uniforms[:, step])
    if bool(greedy.any()):  # an argmax over the vocabulary costs a millisecond a CPU step
        tokens = torch.where(greedy, logits.argmax(dim=-1), tokens)
    return tokens


# A nucleus is looked for among a row's 64 most probable tokens first, then among its 512, its
# 4,096, then among as many as it has tokens of probability (1 - top_p) / 2V or more
# (nucleus_bound): finding them (top-k) costs a fraction of sorting the vocabulary (1.7 ms a
# row at 50k tokens on a CPU), and a confident row's nucleus is a few tokens. SmolLM2 at T = 1
# and top-p 0.95: 15 ms a step for 64 rows with (64, 1024), 11 ms with these tiers.
NUCLEUS_CANDIDATES = (64, 512, 4096)


def sample_top_p(logits: torch.Tensor, top_p: torch.Tensor, uniform: torch.Tensor):
    """Inverse-CDF sampling from the smallest set of tokens whose probability reaches top_p.

    logits (B, V), top_p (B,), uniform (B,) in [0, 1): one draw per row, so the token a row gets
    is a function of that row's logits, top_p and uniform only, whatever else is in the batch.
    A row with top_p = 1 draws from the whole distribution in vocabulary order; any other from
    its nucleus ranked by probability, found among its ``NUCLEUS_CANDIDATES`` most probable
    tokens when it lies within them, else among the :func:`nucleus_bound` most probable, else by
    sorting the row's whole vocabulary.
    """
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    tokens = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)  # (B,)
    whole = top_p >= 1  # (B,)
    if bool(whole.any()):
        tokens[whole] = _inverse_cdf(probs[whole], uniform[whole])
    rows = (~whole).nonzero().squeeze(-1)  # (R,) the rows with a nucleus
    for candidates in NUCLEUS_CANDIDATES:
        rows = _draw_within_top(candidates, probs, rows, top_p, uniform, tokens)
    if len(rows):
        bound = nucleus_bound(probs[rows], top_p[rows])
        rows = _draw_within_top(bound, probs, rows, top_p, uniform, tokens)
    if len(rows):
        ranked, order = probs[rows].sort(dim=-1, descending=True, stable=True)
        tokens[rows] = _nucleus_token(ranked, order, top_p[rows], uniform[rows])
    return tokens


def _draw_within_top(candidates: int, probs, rows, top_p, uniform, tokens) -> torch.Tensor:
    """Draw into ``tokens`` for the ``rows`` whose nucleus lies among their ``candidates`` most
    probable tokens; return the (R',) rows left, all of them where sorting costs as much."""
    if not len(rows) or 2 * candidates > probs.shape[-1]:
        return rows
    ranked, order = probs[rows].topk(candidates, dim=-1)  # (R, k) each, descending
    inside = ranked.sum(dim=-1) > top_p[rows]  # (R,) the nucleus lies within the top k
    found = rows[inside]
    tokens[found] = _nucleus_token(ranked[inside], order[inside], top_p[found], uniform[found])
    return rows[~inside]


def nucleus_bound(probs: torch.Tensor, top_p: torch.Tensor) -> int:
    """How many of their most probable tokens hold the nucleus of every row of (R, V) ``probs``.

    The tokens of probability below (1 - top_p) / 2V hold less than (1 - top_p) / 2 together,
    so those at or above it hold more than top_p: they are a ranking's first tokens, and hold
    the nucleus. The count is a bound, not a proof: callers check that the top-k reach top_p.
    """
    floor = (1 - top_p) / (2 * probs.shape[-1])  # (R,)
    return int((probs >= floor[:, None]).sum(dim=-1).max())


def _nucleus_token(ranked, order, top_p, uniform) -> torch.Tensor:
    """(R,) token drawn from each row's nucleus, given its probabilities in descending order
    (R, k) and their token ids (R, k)."""
    before = ranked.cumsum(dim=-1) - ranked  # (R, k) mass of the tokens ranked above
    kept = ranked.masked_fill(before >= top_p[:, None], 0.0)  # (R, k), never the top token
    return order.gather(dim=-1, index=_inverse_cdf(kept, uniform)[:, None]).squeeze(-1)


def _inverse_cdf(weights: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """(B,) column of each row of (B, N) non-negative ``weights`` that its uniform falls in,
    never one of zero weight past the last positive one."""
    cumulative = weights.cumsum(dim=-1)  # (B, N)
    target = uniform.to(cumulative.dtype) * cumulative[:, -1]  # (B,)
    index = torch.searchsorted(cumulative, target[:, None], right=True)  # (B, 1)
    positive = weights > 0  # (B, N)
    last = weights.shape[-1] - 1 - positive.flip(-1).int().argmax(dim=-1, keepdim=True)  # (B, 1)
    return torch.minimum(index, last).squeeze(-1)


# --- the KV cache --------------------------------------------------------------------------------


class PreallocatedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values live in tensors allocated once for the whole run.

    ``DynamicLayer`` concatenates each step's keys to the cache, copying the whole cache every
    step (most of a step's time on a CPU at batch 64). This layer writes them into place and
    hands attention a view of the filled part, (B, H, length, D), so nothing is copied.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, _, _ = key_states.shape  # (B, H, T, D)
        shape = (batch, heads, self.capacity)
        self.device = key_states.device
        self.key_store = key_states.new_zeros(*shape, key_states.shape[-1])  # (B, H, C, D)
        self.value_store = value_states.new_zeros(*shape, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache full: {end} positions for {self.capacity}")
        self.key_store[:, :, self.length : end] = key_states
        self.value_store[:, :, self.length : end] = value_states
        self.length = end
        self.keys = self.key_store[:, :, :end]  # (B, H, end, D) views, no copy
        self.values = self.value_store[:, :, :end]
        return self.keys, self.values

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Each row ``repeats`` times, stores included (a prompt's prefill shared by its group)."""
        if not self.is_initialized:
            return
        self.key_store = self.key_store.repeat_interleave(repeats, dim=0)
        self.value_store = self.value_store.repeat_interleave(repeats, dim=0)
        self.keys = self.key_store[:, :, : self.length]
        self.values = self.value_store[:, :, : self.length]


def preallocated_cache(model, capacity: int):
    """A cache of :class:`PreallocatedLayer` s holding ``capacity`` positions, for models whose
    cache is made of plain ``DynamicLayer`` s (full attention); None, the model's own, otherwise.
    """
    if cache_argument(model) != "cache":
        return None
    cache = DynamicCache(config=model.config)
    if cache.layers:
        if any(type(layer) is not DynamicLayer for layer in cache.layers):
            return None
        cache.layers = [PreallocatedLayer(capacity) for _ in cache.layers]
    elif cache.layer_class_to_replicate is DynamicLayer:
        cache.layer_class_to_replicate = lambda: PreallocatedLayer(capacity)
    else:
        return None
    return cache


def preallocates(model) -> bool:
    """Whether :func:`preallocated_cache` makes ``model`` a cache (else it keeps its own)."""
    return preallocated_cache(model, 1) is not None


# --- what differs between models -----------------------------------------------------------------


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def forward_parameters(model) -> frozenset[str]:
    """The parameters of ``model``'s forward; of the model inside a DDP wrapper (``.module``)."""
    model = getattr(model, "module", model)
    return parameters_of(getattr(model.forward, "__func__", model.forward))


@functools.cache
def parameters_of(function) -> frozenset[str]:
    return frozenset(inspect.signature(function).parameters)


def cache_argument(model) -> str:
    """Transformers 5 calls the KV cache ``cache``; older models call it ``past_key_values``."""
    return "cache" if "cache" in forward_parameters(model) else "past_key_values"


def cache_of(outputs):
    cache = getattr(outputs, "cache", None)
    return cache if cache is not None else outputs.past_key_values


def last_logits_only(model) -> dict:
    """Ask for the last position's logits only, where the model supports it (saves B·P·V)."""
    return {"logits_to_keep": 1} if "logits_to_keep" in forward_parameters(model) else {}


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a completion: the tokenizer's EOS and the generation config's."""
    ids = set()
    config = getattr(model, "generation_config", None)
    for value in (getattr(config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(int(v) for v in value)
    return sorted(ids) or [-1]  # -1: no EOS known, rows then stop at max_new_tokens


def pad_token_id(model, tokenizer) -> int:
    """Any id works (padding is masked out); prefer the pad token, then EOS, then 0."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if isinstance(value, int):
            return value
    return 0
