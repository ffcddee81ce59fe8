"""Flattening of run configs into params: nested dicts, dataclasses,
argparse namespaces and OmegaConf/Hydra configs become dotted keys
(``optimizer.lr``), lists are indexed (``layers.0``), values are stored as
``str(value)`` (what ``mlflow.log_params`` stores)."""

import argparse
import dataclasses
from collections.abc import Mapping
from typing import Any, Dict


def _is_omegaconf(value: Any) -> bool:
    module = type(value).__module__ or ""
    return module.startswith("omegaconf")


def _to_container(value: Any) -> Any:
    """One level of conversion to dicts and lists."""
    if _is_omegaconf(value):
        from omegaconf import OmegaConf  # only present when the config is one

        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, argparse.Namespace):
        return vars(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
    return value


def param_text(value: Any) -> str:
    """The string stored for a param value."""
    if isinstance(value, str):
        return value
    return str(value)


def flatten_config(config: Any, prefix: str = "") -> Dict[str, str]:
    """Flattens ``config`` into ``{dotted_key: str(value)}``.

    Accepts a mapping, a dataclass instance, an ``argparse.Namespace``, an
    OmegaConf ``DictConfig``/``ListConfig`` (interpolations resolved), or
    ``None``; nested values of any of these kinds, lists and tuples are
    flattened too.
    """
    out: Dict[str, str] = {}
    if config is None:
        return out
    root = _to_container(config)
    if not prefix and not isinstance(root, (Mapping, list, tuple)):
        raise TypeError(
            f"config must be a dict, a dataclass, an argparse.Namespace or an OmegaConf config, "
            f"not {type(config).__name__}"
        )
    _flatten_into(root, prefix, out)
    return out


def _flatten_into(value: Any, prefix: str, out: Dict[str, str]) -> None:
    value = _to_container(value)
    if isinstance(value, Mapping):
        for key, nested in value.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            _flatten_into(nested, name, out)
    elif isinstance(value, (list, tuple)):
        for index, nested in enumerate(value):
            name = f"{prefix}.{index}" if prefix else str(index)
            _flatten_into(nested, name, out)
    else:
        out[prefix] = param_text(value)
