"""Common base of the streaming accumulators: config, image counter, state_dict round trip."""

from __future__ import annotations

import json
from typing import Any

import numpy as np


class Accumulator:
    """Base class: ``update(batch, image_indices=None)``, ``merge(other)``, ``result()``.

    Subclasses keep their constructor arguments in ``self._config`` (JSON-native values) and
    their running state in numpy arrays listed by ``_state_arrays()``. ``state_dict()`` returns
    both as a dict of numpy arrays (config as a 0-d string array), so an audit can checkpoint
    with ``np.savez`` and resume with ``from_state_dict``, or gather shards across processes and
    ``merge`` them.
    """

    _config: dict[str, Any]

    def __init__(self) -> None:
        self._next_index = 0  # default global image index for batches given without indices

    # -- to override ---------------------------------------------------------------------
    def _state_arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _load_state_arrays(self, state: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------
    def _check_mergeable(self, other: "Accumulator") -> None:
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        if _norm(other._config) != _norm(self._config):
            raise ValueError(f"cannot merge {type(self).__name__} shards with different settings: "
                             f"{self._config} vs {other._config}")

    def state_dict(self) -> dict[str, np.ndarray]:
        """All state as numpy arrays (config under ``"__config__"``)."""
        state = {k: np.asarray(v) for k, v in self._state_arrays().items()}
        from .results import to_jsonable

        state["__config__"] = np.array(json.dumps(to_jsonable(self._config)))
        state["__class__"] = np.array(type(self).__name__)
        state["__next_index__"] = np.array(self._next_index, dtype=np.int64)
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]):
        """Rebuild an accumulator from :meth:`state_dict` output (e.g. loaded with np.load)."""
        name = str(np.asarray(state["__class__"]))
        if name != cls.__name__:
            raise ValueError(f"state_dict is for {name}, not {cls.__name__}")
        config = json.loads(str(np.asarray(state["__config__"])))
        obj = cls(**config)
        obj._load_state_arrays({k: np.asarray(v) for k, v in state.items() if not k.startswith("__")})
        obj._next_index = int(np.asarray(state.get("__next_index__", 0)))
        return obj


def _norm(config: dict[str, Any]) -> str:
    from .results import to_jsonable

    return json.dumps(to_jsonable(config), sort_keys=True)
