"""The instructions Ghost Attention teaches a model to keep: constraints, drawn from a seed.

The paper's families (Llama 2, section 3.3) are hobbies ("You enjoy e.g. Tennis"), languages
("Speak in e.g. French") and public figures ("Act as e.g. Napoleon"); an instruction combines
one or more of them at random, and half of the time it is shortened ("Always act as Napoleon
from now" → "Figure: Napoleon."). Whether a reply keeps such a constraint takes a judge; the
rule-checkable families added here do not, so that adherence can be measured by a function:

- ``lowercase``: "Answer only in lowercase letters." — a reply adheres when it holds at least
  one letter and no uppercase one;
- ``first_word``: "Begin every reply with the word "Indeed"." — its first word (a run of
  letters and digits, punctuation and spaces before it skipped) is the word;
- ``last_word``: "End every reply with the word "Cheers"." — its last word is the word.

Words are compared without regard to case, so that "lowercase only" and "begin with Indeed"
can be combined and kept together ("indeed, …").

:func:`draw_instruction` draws an instruction from a seed (the same seed, the same
instruction): 1 to ``max_families`` distinct families, each with a value and a wording drawn
from its lists, shortened with probability ``short_fraction``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

HOBBIES = (
    "tennis", "chess", "gardening", "painting", "hiking", "cooking", "photography",
    "birdwatching", "knitting", "surfing", "astronomy", "playing jazz piano", "rock climbing",
    "baking bread", "fishing", "origami",
)  # fmt: skip
LANGUAGES = (
    "French", "Spanish", "German", "Italian", "Portuguese", "Dutch", "Swedish", "Polish",
    "Japanese", "Hindi",
)  # fmt: skip
PUBLIC_FIGURES = (
    "Napoleon", "Cleopatra", "Albert Einstein", "Marie Curie", "William Shakespeare",
    "Abraham Lincoln", "Leonardo da Vinci", "Ada Lovelace", "Mahatma Gandhi", "Frida Kahlo",
    "Isaac Newton", "Amelia Earhart",
)  # fmt: skip
FIRST_WORDS = ("Indeed", "Certainly", "Well", "Absolutely", "Alright")
LAST_WORDS = ("Cheers", "Onward", "Enjoy", "Farewell")

_WORD = re.compile(r"[^\W_]+")  # letters and digits, in any script


def words(text: str) -> list[str]:
    """The words of ``text``: runs of letters and digits (punctuation and spaces split them)."""
    return _WORD.findall(text)


def is_lowercase(response: str, _value: str = "") -> bool:
    """At least one letter, and none of them uppercase."""
    return any(c.isalpha() for c in response) and not any(c.isupper() for c in response)


def begins_with(response: str, word: str) -> bool:
    """The response's first word is ``word`` (case aside)."""
    found = words(response)
    return bool(found) and found[0].casefold() == word.casefold()


def ends_with(response: str, word: str) -> bool:
    """The response's last word is ``word`` (case aside)."""
    found = words(response)
    return bool(found) and found[-1].casefold() == word.casefold()


# The repairs of a reply that breaks a rule: the least change that makes it keep the rule.
def lowercased(response: str, _value: str = "") -> str:
    return response.lower()


def begun_with(response: str, word: str) -> str:
    return response if begins_with(response, word) else f"{word}, {response.lstrip()}"


def ended_with(response: str, word: str) -> str:
    return response if ends_with(response, word) else f"{response.rstrip()} {word}!"


@dataclass(frozen=True)
class Family:
    """A kind of constraint: its values, its wordings ("{}" is the value) and, when a function
    can tell whether a reply keeps it, that function ``rule(response, value)``."""

    name: str
    values: tuple[str, ...]
    long_forms: tuple[str, ...]
    short_form: str
    rule: Callable[[str, str], bool] | None = None
    repair: Callable[[str, str], str] | None = None  # (response, value) -> one that keeps it


FAMILIES = {
    family.name: family
    for family in (
        Family(
            "hobby",
            HOBBIES,
            ("You enjoy {}.", "Your favourite hobby is {}, and you like to bring it up."),
            "Hobby: {}.",
        ),
        Family("language", LANGUAGES, ("Always answer in {}.", "Speak in {}."), "Language: {}."),
        Family(
            "figure",
            PUBLIC_FIGURES,
            ("Act as {}.", "Always act as {} from now on."),
            "Figure: {}.",
        ),
        Family(
            "lowercase",
            ("",),
            ("Answer only in lowercase letters.", "Write every reply in lowercase only."),
            "Lowercase only.",
            is_lowercase,
            lowercased,
        ),
        Family(
            "first_word",
            FIRST_WORDS,
            ('Begin every reply with the word "{}".', 'Always start your answer with "{}".'),
            "First word: {}.",
            begins_with,
            begun_with,
        ),
        Family(
            "last_word",
            LAST_WORDS,
            ('End every reply with the word "{}".',),
            "Last word: {}.",
            ends_with,
            ended_with,
        ),
    )
}
PAPER_FAMILIES = ("hobby", "language", "figure")
RULE_FAMILIES = tuple(name for name, family in FAMILIES.items() if family.rule is not None)


@dataclass(frozen=True)
class Constraint:
    """One constraint: its family, its value ("tennis", "Indeed"; "" for lowercase) and its
    long and short wordings."""

    family: str
    value: str
    long_text: str
    short_text: str

    @property
    def checkable(self) -> bool:
        """Whether a function tells if a reply keeps it (a rule-checkable family)."""
        return FAMILIES[self.family].rule is not None

    def adheres(self, response: str) -> bool:
        """Whether ``response`` keeps the constraint; only for a rule-checkable one."""
        rule = FAMILIES[self.family].rule
        if rule is None:
            raise ValueError(f"a {self.family!r} constraint is not rule-checkable")
        return rule(response, self.value)

    @classmethod
    def of(cls, family: str, value: str = "", form: int = 0) -> Constraint:
        """The constraint of ``family`` with ``value``, worded by its ``form``-th long form."""
        kind = FAMILIES[family]
        long_text = kind.long_forms[form].format(value)
        return cls(family, value, long_text, kind.short_form.format(value))


@dataclass(frozen=True)
class Instruction:
    """Constraints given together, in their long or their ``short`` wording."""

    constraints: tuple[Constraint, ...]
    short: bool = False

    @property
    def text(self) -> str:
        """``"Act as Napoleon. Speak in French."``, or ``"Figure: Napoleon. Language: French."``."""
        return " ".join(c.short_text if self.short else c.long_text for c in self.constraints)

    @property
    def families(self) -> list[str]:
        return [c.family for c in self.constraints]

    @property
    def checkable(self) -> bool:
        """Whether a function can tell if a reply keeps it: some constraint is rule-checkable."""
        return any(c.checkable for c in self.constraints)

    def adheres(self, response: str) -> bool:
        """Whether ``response`` keeps every rule-checkable constraint (the others cannot be
        checked by a function); raises ValueError when none is rule-checkable."""
        checked = [c for c in self.constraints if c.checkable]
        if not checked:
            raise ValueError(f"no constraint of {self.text!r} is rule-checkable")
        return all(c.adheres(response) for c in checked)

    def repair(self, response: str) -> str:
        """``response`` changed as little as it takes to keep every rule-checkable constraint
        (lower-cased last, so that a word added at either end is lower-cased too)."""
        for constraint in sorted(self.constraints, key=lambda c: c.family == "lowercase"):
            fix = FAMILIES[constraint.family].repair
            if fix is not None:
                response = fix(response, constraint.value)
        return response

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "short": self.short,
            "constraints": [{"family": c.family, "value": c.value} for c in self.constraints],
        }


def draw_instruction(
    seed: int | str | random.Random,
    *,
    families: Sequence[str] = tuple(FAMILIES),
    max_families: int = 2,
    short_fraction: float = 0.5,
) -> Instruction:
    """An instruction drawn from ``seed`` (see the module docstring): 1 to ``max_families``
    distinct ``families`` (in the order given), each with a random value and wording, shortened
    with probability ``short_fraction``. A seed (int or str) always draws the same one."""
    unknown = [name for name in families if name not in FAMILIES]
    if unknown or not families:
        raise ValueError(f"families must be some of {list(FAMILIES)}, not {list(families)}")
    if max_families < 1:
        raise ValueError(f"max_families must be at least 1, not {max_families}")
    rng = seed if isinstance(seed, random.Random) else random.Random(seed)
    count = rng.randint(1, min(max_families, len(families)))
    chosen = sorted(rng.sample(range(len(families)), count))
    constraints = []
    for index in chosen:
        family = FAMILIES[families[index]]
        value = rng.choice(family.values)
        constraints.append(Constraint.of(family.name, value, rng.randrange(len(family.long_forms))))
    return Instruction(tuple(constraints), short=rng.random() < short_fraction)


__all__ = [
    "FAMILIES",
    "FIRST_WORDS",
    "LAST_WORDS",
    "PAPER_FAMILIES",
    "RULE_FAMILIES",
    "Constraint",
    "Family",
    "Instruction",
    "begins_with",
    "draw_instruction",
    "ends_with",
    "is_lowercase",
    "words",
]
