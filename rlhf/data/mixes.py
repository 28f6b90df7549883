"""The Llama 2 data mixes of reward-model training (section 3.2.2).

A helpfulness reward model trains on all the platform's helpfulness pairs plus as many drawn
from its safety pairs and the open-source sets; a safety model on all safety and open-source
harmlessness pairs plus 10 % from helpfulness data. :class:`MixRecipe` states such a mix,
:data:`RECIPES` holds the paper's two, and :func:`mix` draws one, reproducibly under a seed.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from rlhf.data.pairs import PreferencePair
from rlhf.preferences import is_dropped_safety_pair

# Source names of the two Llama 2 recipes (keys of the ``sources`` given to :func:`mix`).
HELPFULNESS = "helpfulness"  # the platform's helpfulness annotations ("Meta Helpfulness")
SAFETY = "safety"  # the platform's safety annotations ("Meta Safety")
OPEN_SOURCE_HELPFULNESS = "open_source_helpfulness"  # e.g. HH-RLHF helpful-*
OPEN_SOURCE_HARMLESSNESS = "open_source_harmlessness"  # e.g. HH-RLHF harmless-base


def drop_unsafe_chosen(pairs: Iterable[PreferencePair]) -> list[PreferencePair]:
    """The pairs without the safety pairs whose chosen reply is unsafe and rejected one safe.

    Llama 2, section 3.2.2, via :func:`rlhf.preferences.is_dropped_safety_pair`; applies to
    pairs of kind "safety" whose two labels are known (the platform's training export has
    already dropped them; its canonical export has not).
    """
    return [pair for pair in pairs if not _is_dropped(pair)]


def _is_dropped(pair: PreferencePair) -> bool:
    return pair.kind == SAFETY and is_dropped_safety_pair(pair.chosen_safe, pair.rejected_safe)


@dataclass(frozen=True)
class MixRecipe:
    """A data mix: some sources taken whole, topped up from others in a fixed proportion.

    - ``base``: names of the sources used in full (every pair once).
    - ``extra``: names of the sources drawn from.
    - ``proportion = (base_parts, extra_parts)``: the mix holds ``base_parts : extra_parts``
      base to extra pairs. With N base pairs the number of extra pairs is
      ``round(N * extra_parts / base_parts)``, rounding halves up, computed exactly on
      integers (:func:`extra_count`): (50, 50) ("an equal amount") draws N extra pairs; (90, 10)
      draws round(N / 9), so that extra pairs are 10 % of the mix.
    - ``extra_weights``: None draws uniformly from the extra sources pooled together (each
      source contributes in proportion to its size, as the paper's "uniformly sampled");
      otherwise one weight per ``extra`` source, the count split by largest remainder
      (ties to the earlier source) and each source drawn on its own.
    - ``upsample``: the extra pairs are sampled *without replacement*. When a pool holds fewer
      pairs than asked, ``upsample=False`` (the default) takes all of it once, warns, and the
      mix falls short of the proportion; ``upsample=True`` keeps the exact count by repeating
      the pool: every pair appears ⌊n/size⌋ times and a random n mod size of them once more.
    """

    name: str
    base: tuple[str, ...]
    extra: tuple[str, ...] = ()
    proportion: tuple[int, int] = (100, 0)
    extra_weights: tuple[float, ...] | None = None
    upsample: bool = False

    def __post_init__(self) -> None:
        base_parts, extra_parts = self.proportion
        if not self.base:
            raise ValueError(f"recipe {self.name!r}: needs at least one base source")
        if set(self.base) & set(self.extra):
            raise ValueError(f"recipe {self.name!r}: a source cannot be both base and extra")
        if not all(isinstance(p, int) and not isinstance(p, bool) for p in self.proportion):
            raise ValueError(f"recipe {self.name!r}: the proportion must be two integers")
        if base_parts <= 0 or extra_parts < 0:
            raise ValueError(f"recipe {self.name!r}: the proportion must be (>0, >=0) parts")
        if extra_parts and not self.extra:
            raise ValueError(f"recipe {self.name!r}: an extra share needs extra sources")
        if self.extra_weights is not None:
            weights = self.extra_weights
            if len(weights) != len(self.extra) or any(w < 0 for w in weights) or sum(weights) <= 0:
                raise ValueError(
                    f"recipe {self.name!r}: extra_weights needs one weight >= 0 per extra source"
                    " and a positive sum"
                )

    @property
    def sources(self) -> tuple[str, ...]:
        return self.base + self.extra


# Llama 2, section 3.2.2: "[The] Helpfulness reward model is eventually trained on all Meta
# Helpfulness data, combined with an equal parts of the remaining data uniformly sampled from
# Meta Safety and from the open-source datasets. [The] Safety reward model is trained on all
# Meta Safety and Anthropic Harmless data, mixed with Meta Helpfulness and open-source
# helpfulness data in a 90/10 proportion."
HELPFULNESS_RECIPE = MixRecipe(
    name="helpfulness",
    base=(HELPFULNESS,),
    extra=(SAFETY, OPEN_SOURCE_HELPFULNESS, OPEN_SOURCE_HARMLESSNESS),
    proportion=(50, 50),
)
SAFETY_RECIPE = MixRecipe(
    name="safety",
    base=(SAFETY, OPEN_SOURCE_HARMLESSNESS),
    extra=(HELPFULNESS, OPEN_SOURCE_HELPFULNESS),
    proportion=(90, 10),
)
RECIPES = {"helpfulness": HELPFULNESS_RECIPE, "safety": SAFETY_RECIPE}


def extra_count(recipe: MixRecipe, base_count: int) -> int:
    """How many extra pairs go with ``base_count`` base pairs: round half up of N·e/b."""
    base_parts, extra_parts = recipe.proportion
    return (2 * base_count * extra_parts + base_parts) // (2 * base_parts)


def _apportion(total: int, weights: Sequence[float]) -> list[int]:
    """Split ``total`` by ``weights`` with the largest-remainder method (ties: earlier first)."""
    exact = [Fraction(w) for w in weights]
    scale = sum(exact)
    quotas = [total * w / scale for w in exact]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _draw(
    pool: list[PreferencePair], count: int, rng: random.Random, recipe: MixRecipe, what: str
) -> list[PreferencePair]:
    if count <= len(pool):
        return rng.sample(pool, count)
    if not pool:
        raise ValueError(
            f"recipe {recipe.name!r} needs {count} pairs from {what}, which hold none; "
            "add data there or use a recipe without that share"
        )
    if recipe.upsample:
        repeats, rest = divmod(count, len(pool))
        return pool * repeats + rng.sample(pool, rest)
    warnings.warn(
        f"recipe {recipe.name!r} asks for {count} pairs from {what}, which hold only "
        f"{len(pool)}: all are used once and the mix falls short of {recipe.proportion}",
        stacklevel=3,
    )
    return list(pool)


def mix(
    recipe: MixRecipe, sources: Mapping[str, Sequence[PreferencePair]], seed: int = 0
) -> list[PreferencePair]:
    """The pairs of a recipe's mix, shuffled; deterministic for given sources and seed.

    1. ``sources`` maps source names to pairs; a name the recipe does not use is an error (a
       typo would otherwise drop data silently), a name it uses but ``sources`` lacks is empty.
    2. The safety drop rule (:func:`drop_unsafe_chosen`) is applied to every source first; the
       counts below are of the pairs that remain.
    3. All base pairs are kept; ``extra_count(recipe, N)`` extra pairs are drawn as the
       :class:`MixRecipe` documents (without replacement; repeated only with ``upsample``).
       Extra pairs needed from sources that are all empty are an error.
    4. Base and extra pairs are shuffled together with ``random.Random(seed)``.

    Split each source (:func:`split`) before mixing, and mix only the training parts, so that
    no pair drawn into the training mix comes from an evaluation prompt.
    """
    unknown = sorted(set(sources) - set(recipe.sources))
    if unknown:
        raise ValueError(
            f"recipe {recipe.name!r} uses the sources {list(recipe.sources)}, not {unknown}"
        )
    rng = random.Random(seed)
    kept = {name: drop_unsafe_chosen(sources.get(name, ())) for name in recipe.sources}
    base = [pair for name in recipe.base for pair in kept[name]]
    count = extra_count(recipe, len(base))
    extra: list[PreferencePair] = []
    if count:
        if recipe.extra_weights is None:
            pool = [pair for name in recipe.extra for pair in kept[name]]
            extra = _draw(pool, count, rng, recipe, f"{list(recipe.extra)}")
        else:
            counts = _apportion(count, recipe.extra_weights)
            for name, source_count in zip(recipe.extra, counts, strict=True):
                extra += _draw(kept[name], source_count, rng, recipe, repr(name))
    pairs = base + extra
    rng.shuffle(pairs)
    return pairs
