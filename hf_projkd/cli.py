"""Recipe argument parsing: dataclass groups via ``HfArgumentParser``, from a YAML/JSON file and the CLI.

``--config FILE`` loads defaults from a file; every field can still be overridden on the command line, so
``recipe.py --config base.yaml --learning_rate 0.01`` works as users of the transformers examples expect.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Field values from a ``.yaml``/``.yml`` or ``.json`` file (a flat mapping of field name -> value)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file.")
    text = path.read_text()
    values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(values, dict):
        raise ValueError(f"--config {path} must hold a mapping of field names to values, got {type(values).__name__}.")
    return values


def parse_recipe_args(
    dataclass_types: tuple[type, ...], defaults: dict[str, Any] | None = None, argv: list[str] | None = None
) -> tuple[Any, ...]:
    """Parse ``dataclass_types`` with recipe ``defaults`` < ``--config`` file < command-line flags.

    Unknown keys in the defaults or the file are an error that names them, so a typo never silently keeps a
    default.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(dataclass_types)
    parser.add_argument("--config", default=None, help="YAML or JSON file with field values (CLI flags win).")
    values = dict(defaults or {})
    if "--config" in argv:
        index = argv.index("--config")
        values.update(read_config_file(argv[index + 1]))
        del argv[index : index + 2]
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Unknown fields {unknown} in the recipe defaults or --config file; --help lists the fields.")
    parser.set_defaults(**values)
    namespace = parser.parse_args(argv)
    fields_of = [{f for f in getattr(t, "__dataclass_fields__", {})} for t in dataclass_types]
    outputs = []
    for dataclass_type, names in zip(dataclass_types, fields_of, strict=True):
        outputs.append(dataclass_type(**{k: v for k, v in vars(namespace).items() if k in names}))
    return tuple(outputs)
