"""Reading the project's configuration files (protocols, presets, phantom anatomy and domains) safely.

A configuration file is small data written by a person: a few kilobytes of mappings, lists and numbers. The
parsers here refuse what such a file never needs and what can exhaust the machine or crash the parser:
YAML aliases (a 400-byte file of nested aliases expands to gigabytes: the "billion laughs"), files over
:data:`MAX_BYTES`, and nesting deeper than :data:`MAX_DEPTH` (Python's parsers recurse per level). Every
refusal is a :class:`ConfigFileError` that names the file and what to change.
"""
from __future__ import annotations

import json
from typing import Any

import yaml

#: the largest configuration file read (the shipped presets are a few kB)
MAX_BYTES = 1_000_000
#: the deepest nesting of mappings and lists accepted (the shipped files nest 4 levels)
MAX_DEPTH = 32


class ConfigFileError(ValueError):
    """A configuration file that is not valid, or is of a kind these files never are; the message names it."""


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases (``*name``): each value is written out where it is used."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"found the alias *{event.anchor}: aliases are not "
                                                          f"allowed here; write the value out", event.start_mark)
        return super().compose_node(parent, index)


def _depth(value: Any) -> int:
    """Nesting depth of mappings and lists (iterative: no recursion limit of its own)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            deepest = max(deepest, d)
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            deepest = max(deepest, d)
            stack.extend((x, d + 1) for x in v)
    return deepest


def parse_config_text(text: str, kind: str, where: str) -> Any:
    """The data of a configuration file's ``text``: ``kind`` is "json" or "yaml"; ``where`` names the file in
    errors. Raises :class:`ConfigFileError` for invalid text, aliases, size and depth."""
    if len(text.encode("utf-8", "surrogateescape")) > MAX_BYTES:
        raise ConfigFileError(f"{where}: {len(text):,} characters; a configuration file is at most {MAX_BYTES:,} "
                              f"bytes (is this the right file?)")
    name = "JSON" if kind == "json" else "YAML"
    try:
        data = json.loads(text) if kind == "json" else yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506
    except RecursionError:
        raise ConfigFileError(f"{where}: nested deeper than {name} can be read; a configuration file nests a few "
                              f"levels (at most {MAX_DEPTH})") from None
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigFileError(f"{where}: not valid {name}: {e}") from None
    if _depth(data) > MAX_DEPTH:
        raise ConfigFileError(f"{where}: nested {_depth(data)} levels deep; a configuration file nests at most "
                              f"{MAX_DEPTH}")
    return data
