"""Nested Python state (dicts, lists, tuples, numbers, strings, tensors, numpy arrays) stored in two
files that cannot carry code: ``NAME.safetensors`` holds every tensor, ``NAME.json`` the structure
with each tensor replaced by a reference. Used for the optimizer and RNG states of a checkpoint, which
used to be pickles (``torch.load`` of a pickle can run any code its author put in it).

The round trip is exact: tensors keep their dtype and bits; floats go through JSON as their shortest
repr (which parses back to the same double), NaN/inf included; tuples stay tuples, integer dict keys
stay integers.

JSON encoding: plain JSON for None/bool/int/float/str/list and dicts whose keys are strings not
starting with ``$``; otherwise one-key objects ``{"$tuple": [...]}``, ``{"$dict": [[k, v], ...]}``,
``{"$tensor": "<key in the safetensors file>"}``, ``{"$ndarray": [...], "dtype": "uint32",
"shape": [...]}``.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from diffmamba.core.errors import UserError
from diffmamba.core.io import atomic_path, read_json, write_json

FORMAT = "diffmamba-state/1"


def _encode(value, tensors: dict):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        # clone: safetensors refuses tensors that share memory, and a view must not drag its base along
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {"$tensor": key}
    if isinstance(value, np.ndarray):
        return {"$ndarray": value.ravel().tolist(), "dtype": str(value.dtype), "shape": list(value.shape)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: _encode(v, tensors) for k, v in value.items()}
        return {"$dict": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    raise TypeError(f"cannot store a {type(value).__name__} in a state file")


def _decode(value, tensors: dict):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        raise ValueError(f"unexpected JSON value of type {type(value).__name__}")
    if "$tensor" in value:
        return tensors[value["$tensor"]]
    if "$ndarray" in value:
        return np.asarray(value["$ndarray"], dtype=np.dtype(value["dtype"])).reshape(value["shape"])
    if "$tuple" in value:
        return tuple(_decode(v, tensors) for v in value["$tuple"])
    if "$dict" in value:
        return {_hashable(_decode(k, tensors)): _decode(v, tensors) for k, v in value["$dict"]}
    return {k: _decode(v, tensors) for k, v in value.items()}


def _hashable(key):
    if isinstance(key, (list, dict, torch.Tensor, np.ndarray)):
        raise ValueError("a dict key must be a number, string or tuple")
    return key


def paths(folder: str, name: str) -> tuple[str, str]:
    """(json path, safetensors path) of state ``name`` in ``folder``."""
    return os.path.join(folder, name + ".json"), os.path.join(folder, name + ".safetensors")


def save_state(value, folder: str, name: str, durable: bool = False) -> None:
    """Write both files atomically (each through a temporary name); the JSON last, since a reader
    goes by it (a JSON file without its tensors is never left behind)."""
    json_path, tensor_path = paths(folder, name)
    tensors: dict = {}
    encoded = _encode(value, tensors)
    with atomic_path(tensor_path, durable=durable) as tmp:
        save_file(tensors, tmp)
    write_json(json_path, {"format": FORMAT, "value": encoded}, indent=None, durable=durable)


def load_state(folder: str, name: str, fix: str):
    """The value saved by ``save_state``. Any damage is a UserError naming the file and ``fix``."""
    json_path, tensor_path = paths(folder, name)
    try:
        document = read_json(json_path)
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
    except (OSError, ValueError, RecursionError) as e:
        raise UserError(f"{json_path} cannot be read ({_short(e)}); {fix}") from None
    try:
        tensors = load_file(tensor_path)
    except Exception as e:  # safetensors raises its own error types for bad headers / truncation
        raise UserError(f"{tensor_path} cannot be read ({_short(e)}); {fix}") from None
    try:
        return _decode(document["value"], tensors)
    except (KeyError, ValueError, TypeError, RecursionError) as e:
        raise UserError(f"{json_path} does not describe a valid state ({_short(e)}); {fix}") from None


def _short(error: Exception) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text[:160]
