"""Settings declared once: a stage's config dataclass, its checks, its CLI flags and its form.

A stage's config is a dataclass whose fields are declared with :func:`setting`: the default, the
bounds or choices, and how people see it (a label, a help line, a command-line flag, basic or
advanced on the platform's form). Everything else is derived from that one declaration:

- :func:`validate` checks a config against its fields' rules and raises :class:`ConfigError`
  naming the first bad field;
- :func:`from_dict` builds a config from JSON (a run spec, an API request), refusing unknown keys;
- :func:`add_flags` / :func:`flag_values` give ``argparse`` one option per field with a flag;
- :func:`shown_settings` lists the fields a form shows (the platform builds its Django form from
  them; this module imports no Django).

    @dataclass
    class MyConfig:
        learning_rate: float = setting(1e-5, label="Learning rate", minimum=0, above=True,
                                       flag="lr", form=BASIC)
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

BASIC, ADVANCED = "basic", "advanced"  # where a form shows a setting; None: not on forms


class ConfigError(ValueError):
    """A bad setting: ``"learning_rate: must be above 0, not -1"``."""

    def __init__(self, field_name: str, message: str):
        self.field, self.message = field_name, message
        super().__init__(f"{field_name}: {message}")


@dataclass(frozen=True)
class Rule:
    """What a setting accepts and how it is shown, read from its field's metadata."""

    name: str
    type: type  # int, float, str or bool (the annotation without "| None")
    default: Any
    optional: bool = False  # None is allowed ("no limit")
    label: str = ""
    help: str = ""
    minimum: float | None = None
    above: bool = False  # the minimum itself is refused
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    flag: str | None = None  # the command-line option, without "--"
    form: str | None = None  # BASIC, ADVANCED or None

    def check(self, value: Any) -> None:
        if value is None and self.optional:
            return
        if self.type is bool:
            if not isinstance(value, bool):
                raise ConfigError(self.name, "must be true or false")
            return
        if self.type is str:
            if self.choices and value not in self.choices:
                raise ConfigError(self.name, f"must be one of {list(self.choices)}, not {value!r}")
            if not isinstance(value, str):
                raise ConfigError(self.name, f"must be a string, not {value!r}")
            return
        if isinstance(value, bool) or not isinstance(value, int | float):
            what = "a whole number" if self.type is int else "a finite number"
            raise ConfigError(self.name, f"must be {what}, not {value!r}")
        if self.type is int and not isinstance(value, int):
            raise ConfigError(self.name, f"must be a whole number, not {value!r}")
        if not math.isfinite(value):
            raise ConfigError(self.name, f"must be a finite number, not {value!r}")
        if self.minimum is not None and (
            value <= self.minimum if self.above else value < self.minimum
        ):
            bound = "above" if self.above else "at least"
            raise ConfigError(self.name, f"must be {bound} {self.minimum:g}, not {value}")
        if self.maximum is not None and value > self.maximum:
            raise ConfigError(self.name, f"must be at most {self.maximum:g}, not {value}")

    def parse(self, text: str) -> Any:
        """A value typed as text (a flag, a form field); raises ConfigError for bad text."""
        if self.type is str:
            return text
        if self.type is bool:
            if text.lower() in ("true", "1", "yes", "on"):
                return True
            if text.lower() in ("false", "0", "no", "off"):
                return False
            raise ConfigError(self.name, f"must be true or false, not {text!r}")
        try:
            return int(text) if self.type is int else float(text)
        except ValueError:
            what = "a whole number" if self.type is int else "a number"
            raise ConfigError(self.name, f"must be {what}, not {text!r}") from None


def setting(
    default: Any,
    *,
    label: str = "",
    help: str = "",  # noqa: A002 - the word argparse and forms use
    minimum: float | None = None,
    above: bool = False,
    maximum: float | None = None,
    choices: Sequence[str] = (),
    flag: str | None = None,
    form: str | None = None,
) -> Any:
    """A config field with its rule (see the module docstring)."""
    metadata = {
        "label": label,
        "help": help,
        "minimum": minimum,
        "above": above,
        "maximum": maximum,
        "choices": tuple(choices),
        "flag": flag,
        "form": form,
    }
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _plain_type(annotation: Any) -> tuple[type, bool]:
    """(the type, whether None is allowed) of ``int``, ``float | None``, …"""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return members[0], len(members) < len(typing.get_args(annotation))
    return annotation, False


def rules(config_class: type) -> list[Rule]:
    """The rule of every field declared with :func:`setting`, in declaration order."""
    hints = typing.get_type_hints(config_class)
    found = []
    for field in dataclasses.fields(config_class):
        if "flag" not in field.metadata:
            continue
        kind, optional = _plain_type(hints[field.name])
        default = field.default if field.default is not dataclasses.MISSING else None
        found.append(Rule(field.name, kind, default, optional, **field.metadata))
    return found


def validate(config: Any) -> None:
    """Raise :class:`ConfigError` naming the first field whose value breaks its rule."""
    for rule in rules(type(config)):
        rule.check(getattr(config, rule.name))


def from_dict(config_class: type, values: Any):
    """A config from JSON-like values; unknown keys and bad values raise ConfigError."""
    if not isinstance(values, dict):
        raise ConfigError("config", "must be an object of settings")
    known = {field.name for field in dataclasses.fields(config_class)}
    for name in values:
        if name not in known:
            raise ConfigError(name, f"is not a setting; the settings are {sorted(known)}")
    try:
        return config_class(**values)
    except TypeError as error:  # e.g. a tuple setting given a number
        raise ConfigError("config", str(error)) from None


def shown_settings(config_class: type) -> list[Rule]:
    """The settings a form shows (basic ones first, each group in declaration order)."""
    shown = [rule for rule in rules(config_class) if rule.form]
    return sorted(shown, key=lambda rule: rule.form != BASIC)


def add_flags(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One ``--flag`` per setting that has one; unset flags stay None (the config's default)."""
    for rule in rules(config_class):
        if rule.flag is None:
            continue
        described = f"{rule.help} ".replace("%", "%%") if rule.help else ""  # argparse formats
        parser.add_argument(
            "--" + rule.flag.replace("_", "-"),
            dest=rule.name,
            type=_argument_type(rule),
            default=None,
            metavar=rule.type.__name__.upper() if not rule.choices else None,
            choices=rule.choices or None,
            help=f"{described}(default {rule.default})",
        )


def _argument_type(rule: Rule):
    def parse(text: str) -> Any:
        try:
            value = rule.parse(text)
            rule.check(value)
        except ConfigError as error:
            raise argparse.ArgumentTypeError(error.message) from None
        return value

    return parse


def flag_values(args: argparse.Namespace, config_class: type) -> dict[str, Any]:
    """The settings given on the command line, by field name."""
    return {
        rule.name: getattr(args, rule.name)
        for rule in rules(config_class)
        if rule.flag is not None and getattr(args, rule.name, None) is not None
    }
