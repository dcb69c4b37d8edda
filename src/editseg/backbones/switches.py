"""Backbone switches: named, typed settings of a model family that change its output.

A family declares them in ``Backbone.switches`` (name → :class:`Switch`); they are plain
attributes of the backbone, set after loading, from Python
(``segmenter.backbone.set_switches({"vae_latent": "sample"})``) or the command line
(``--backbone-option vae_latent=sample``). Values that differ from the defaults are recorded with
evaluation runs (:meth:`~editseg.methods.base.Method.settings`), so runs with different switches
never resume into one records file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import ConfigError


@dataclass(frozen=True)
class Switch:
    """One switch: its type (bool, int or str), default, allowed values (str only) and meaning."""

    kind: type
    default: Any
    help: str
    choices: tuple[str, ...] = ()

    def coerce(self, name: str, value: Any) -> Any:
        """``value`` as this switch's type; a clear :class:`ConfigError` when it does not fit."""
        if self.kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "1", "yes", "on"):
                return True
            if text in ("false", "0", "no", "off"):
                return False
        elif self.kind is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                return int(value)
        elif self.kind is str and isinstance(value, str):
            if not self.choices or value in self.choices:
                return value
            raise ConfigError(f"Backbone switch {name} must be one of {', '.join(self.choices)}; got {value!r}.")
        raise ConfigError(f"Backbone switch {name} takes a {self.kind.__name__}; got {value!r}.")


def describe(switches: Mapping[str, Switch]) -> str:
    """``"a (bool, default True): meaning; b (...)"`` for error messages and help."""
    parts = []
    for name, switch in switches.items():
        kind = "|".join(switch.choices) if switch.choices else switch.kind.__name__
        parts.append(f"{name} ({kind}, default {switch.default!r}): {switch.help}")
    return "; ".join(parts)


def apply_switches(backbone: Any, values: Mapping[str, Any]) -> None:
    """Validate every name and value first, then set them all (nothing is set on an error)."""
    declared: Mapping[str, Switch] = type(backbone).switches
    unknown = [name for name in values if name not in declared]
    if unknown:
        offer = f"Its switches: {describe(declared)}." if declared else "It has no switches."
        raise ConfigError(f"{backbone.name} has no backbone switch {', '.join(map(repr, unknown))}. {offer}")
    coerced = {name: declared[name].coerce(name, value) for name, value in values.items()}
    for name, value in coerced.items():
        setattr(backbone, name, value)


def changed_switches(backbone: Any) -> dict[str, Any]:
    """The switches whose current value differs from the declared default (JSON-ready)."""
    return {
        name: getattr(backbone, name)
        for name, switch in type(backbone).switches.items()
        if getattr(backbone, name) != switch.default
    }
