"""Recipe command lines: dataclass groups via ``HfArgumentParser``, with config files and method presets.

Precedence, lowest first: the recipe's own config files (``recipes/configs/*.yaml``) and defaults, the loss fields
of ``--method`` (``METHOD_PRESETS``), the user's ``--config FILE``, and the command-line flags. Every token is
parsed by ``argparse``: ``--method=kd`` and ``--method kd`` mean the same, a flag without its value is an error
with the usage, and an unknown field in a file is an error that names it.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from .config import METHODS, method_preset


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Field values from a ``.yaml``/``.yml`` or ``.json`` file (a flat mapping of field name -> value)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file (relative to {Path.cwd()}). Pass the path of a YAML "
                                "or JSON file of field values.")
    text = path.read_text()
    try:
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise ValueError(f"--config {path} is not valid {kind}: {error}\nExpected a mapping of field names to values; "
                         "fix the line the parser names.") from error
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"--config {path} must hold a mapping of field names to values, got {type(values).__name__}.")
    return values


def parse_recipe_args(
    dataclass_types: tuple[type, ...],
    config_files: Sequence[str | Path] = (),
    defaults: dict[str, Any] | None = None,
    argv: list[str] | None = None,
) -> tuple[tuple[Any, ...], set[str]]:
    """Parse ``dataclass_types`` (see the module docstring for the precedence).

    Returns the dataclass instances and the names of the fields the USER set (in ``--config`` or on the command
    line), so a recipe can tell a value it chose from one it was asked for (e.g. ``learning_rate`` given
    explicitly turns the recipe's base-learning-rate rule off).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    names = [{f.name for f in fields(t)} for t in dataclass_types]
    known = set().union(*names)
    has_method = "method" in known

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    if has_method:
        pre.add_argument("--method", default=None, choices=METHODS)
    given, rest = pre.parse_known_args(argv)

    values: dict[str, Any] = {}
    for path in config_files:
        values.update(read_config_file(path))
    values.update(defaults or {})
    user = read_config_file(given.config) if given.config else {}
    if has_method:
        method = getattr(given, "method", None) or user.get("method") or values.get("method")
        if method is not None:
            values.update(method_preset(method), method=method)
    values.update(user)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"Unknown fields {unknown} in {'--config ' + str(given.config) if given.config else 'the recipe config'};"
            " --help lists the fields."
        )

    parser = HfArgumentParser(dataclass_types)
    parser.add_argument("--config", default=None, help="YAML or JSON file with field values (command-line flags win).")
    parser.set_defaults(**values)
    namespace, unknown_flags = parser.parse_known_args(rest)
    if unknown_flags:
        parser.error(f"unrecognized arguments: {' '.join(unknown_flags)}{_suggestion(parser, unknown_flags)}")
    explicit = set(user) | _flags_given(parser, rest)
    if has_method and getattr(given, "method", None):
        explicit.add("method")
    groups = tuple(t(**{k: v for k, v in vars(namespace).items() if k in n}) for t, n in zip(dataclass_types, names,
                                                                                               strict=True))
    return groups, explicit


def _suggestion(parser: argparse.ArgumentParser, tokens: list[str]) -> str:
    """' (did you mean --x?)' for a misspelt flag, so that a typo is not only a usage dump."""
    flags = [flag for action in parser._actions for flag in action.option_strings if flag.startswith("--")]
    close = {token.split("=", 1)[0]: difflib.get_close_matches(token.split("=", 1)[0], flags, n=1, cutoff=0.75)
             for token in tokens if token.startswith("--")}
    hints = [f"{match[0]} for {token}" for token, match in close.items() if match]
    return f" (did you mean {', '.join(hints)}? --help lists the flags)" if hints else " (--help lists the flags)"


def _flags_given(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Destinations of the options that appear in ``argv`` (``--name value`` and ``--name=value`` forms)."""
    by_flag = {flag: action.dest for action in parser._actions for flag in action.option_strings}
    return {by_flag[token.split("=", 1)[0]] for token in argv if token.split("=", 1)[0] in by_flag}
