"""The DAG's global config (``config/<scale>.yaml``): its schema, its defaults and its validation.

The schema is ``config.schema.yaml`` beside this module, with the method registry
(``replication.science.methods``) as the methods' enum. Nothing here reads a file at import.
"""

from __future__ import annotations

import copy
import difflib
import importlib.resources
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from replication.science.errors import ConfigError
from replication.science.methods import METHOD_NAMES


def check_experiment_name(name: str, folder: Path, problem: str) -> None:
    """ConfigError unless ``folder/name/config.yaml`` exists, naming the closest experiment there."""
    available = sorted(p.parent.name for p in folder.glob("*/config.yaml"))
    if name not in available:
        hint = difflib.get_close_matches(name, available, n=1)
        raise ConfigError(
            f"{problem} {name!r} in {folder}/"
            + (f" (did you mean {hint[0]!r}?)" if hint else f"; it has {', '.join(available) or 'none'}")
        )


@cache
def schema() -> dict[str, Any]:
    """The global config's JSON schema, with the method registry as the methods' enum."""
    loaded = yaml.safe_load(importlib.resources.files(__package__).joinpath("config.schema.yaml").read_text())
    loaded["properties"]["methods"]["items"]["enum"] = list(METHOD_NAMES)
    return loaded


@cache
def _defaults() -> dict[str, Any]:
    return {
        "methods": None,
        "seeds": None,
        **{key: spec["default"] for key, spec in schema()["properties"].items() if "default" in spec},
    }


def defaults() -> dict[str, Any]:
    """The defaults the DAG's config schema states (the one place they are written), as a new dict."""
    return copy.deepcopy(_defaults())


def _describe(error: Any) -> str:
    """One line for one schema violation, naming the key and, for a typo, the closest valid one."""
    where = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        parts = []
        for key in extra:
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            parts.append(
                f"unknown key {(where + '.' if where else '') + str(key)!r}"
                + (f" (did you mean {hint[0]!r}?)" if hint else f"; valid keys: {', '.join(allowed)}")
            )
        return "; ".join(parts)
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        if missing == "scale":
            return "the config names no scale: add `scale: smoke|cpu|gpu1|paper`, or pass --configfile config/<scale>.yaml"
        return f"the config lacks the required key {missing!r}"
    if error.validator == "enum":
        return f"{where}: {error.instance!r} is not one of {', '.join(map(str, error.validator_value))}"
    return f"{where or 'config'}: {error.message}"


INTEGER_KEYS = ("threads_per_run", "gpus_per_run", "nproc_per_run")


def _integers(raw: dict[str, Any]) -> dict[str, Any]:
    """Digit strings as integers where the schema wants integers: Snakemake's --config parses
    ``seeds=[0,1]`` into ``['0', '1']``."""

    def number(value: Any) -> Any:
        return int(value) if isinstance(value, str) and value.strip().isdigit() else value

    out = dict(raw)
    for key in INTEGER_KEYS:
        if key in out:
            out[key] = number(out[key])
    if isinstance(out.get("seeds"), list):
        out["seeds"] = [number(v) for v in out["seeds"]]
    if isinstance(out.get("per_experiment"), dict):
        out["per_experiment"] = {
            name: {k: number(v) for k, v in values.items()} if isinstance(values, dict) else values
            for name, values in out["per_experiment"].items()
        }
    return out


def resolve_global_config(raw: dict[str, Any]) -> dict[str, Any]:
    """The global config with every omitted key set to the schema's default, after validation.

    Nothing else is merged in: a config file that names ``scale: smoke`` and its experiments gets
    1 thread, 0 GPUs and 1 process per run, as the schema documents. Raises ``ConfigError`` with one
    line per problem.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"the config must be a mapping of keys to values, not {type(raw).__name__}")
    raw = _integers(raw)
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("\n".join(_describe(e) for e in errors))
    config = copy.deepcopy({**_defaults(), **raw})
    # a per_experiment entry for an experiment that is not chosen is kept (and unused), so that one
    # scale's file serves any subset; one that names no experiment at all is a typo
    for name in sorted(config["per_experiment"]):
        check_experiment_name(name, Path(config["experiments_dir"]), "per_experiment names no experiment")
    return config
