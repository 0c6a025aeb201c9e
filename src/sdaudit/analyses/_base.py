"""Common base of the streaming accumulators: settings, image counter, state_dict round trip.

Settings. An accumulator's settings are its constructor arguments, recorded as they were given (JSON-native,
like scikit-learn's ``get_params``): the base class captures them when ``__init__`` runs, so no subclass
writes its settings out by hand. They decide which shards may merge and rebuild an accumulator from a
checkpoint (``cls(**params)``).

State keys. ``state_dict()`` is flat (one numpy array per key, for ``np.savez``); the state of a part
(per-image rows, a nested accumulator) is namespaced under ``"<part>.<key>"`` by :func:`nest` and read back
by :func:`unnest`, the one place that spells the separator. The base's own entries are ``"__config__"`` (the settings),
``"__class__"`` and ``"__next_index__"``.
"""

from __future__ import annotations

import functools
import inspect
import json
from typing import Any

import numpy as np

from ._jsonable import to_jsonable

# Keys of the base's own entries; "__config__" is the settings' key in checkpoints of every version.
PARAMS_KEY, CLASS_KEY, NEXT_INDEX_KEY = "__config__", "__class__", "__next_index__"
_SEP = "."
_REGISTRY: dict[str, type["Accumulator"]] = {}


def nest(part: str, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` of a part with its keys namespaced: ``{"<part>.<key>": value}``."""
    return {f"{part}{_SEP}{key}": value for key, value in state.items()}


def unnest(part: str, state: dict[str, Any]) -> dict[str, Any]:
    """The state of ``part`` in a flat ``state``, keys without the namespace (inverse of :func:`nest`)."""
    prefix = f"{part}{_SEP}"
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def accumulator_class(state: dict[str, Any]) -> type["Accumulator"]:
    """The accumulator class that wrote ``state`` (a :meth:`Accumulator.state_dict`)."""
    name = str(np.asarray(state[CLASS_KEY]))
    if name not in _REGISTRY:
        raise ValueError(f"state_dict of unknown accumulator {name!r}")
    return _REGISTRY[name]


class Accumulator:
    """Base class: ``update(batch, image_indices=None)``, ``merge(other)``, ``result()``.

    Subclasses keep their running state in numpy arrays listed by ``_state_arrays()``. ``state_dict()``
    returns it with the settings (:meth:`get_params`) as a dict of numpy arrays, so an audit can checkpoint
    with ``np.savez`` and resume with ``from_state_dict``, or gather shards across processes and ``merge`` them.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls
        if "__init__" in cls.__dict__:
            cls.__init__ = _recording_params(cls, cls.__dict__["__init__"])

    def __init__(self) -> None:
        self._next_index = 0  # default global image index for batches given without indices

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments, JSON-native (defaults filled in): ``type(self)(**get_params())`` rebuilds
        an empty accumulator with the same settings."""
        return json.loads(json.dumps(self._params))

    # -- to override ---------------------------------------------------------------------
    def _state_arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _load_state_arrays(self, state: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------
    def _check_mergeable(self, other: "Accumulator") -> None:
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        if _norm(other._params) != _norm(self._params):
            raise ValueError(f"cannot merge {type(self).__name__} shards with different settings: "
                             f"{self._params} vs {other._params}")

    def state_dict(self) -> dict[str, np.ndarray]:
        """All state as numpy arrays (settings under ``"__config__"``)."""
        state = {k: np.asarray(v) for k, v in self._state_arrays().items()}
        state[PARAMS_KEY] = np.array(json.dumps(self._params))
        state[CLASS_KEY] = np.array(type(self).__name__)
        state[NEXT_INDEX_KEY] = np.array(self._next_index, dtype=np.int64)
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]):
        """Rebuild an accumulator from :meth:`state_dict` output (e.g. loaded with np.load)."""
        name = str(np.asarray(state[CLASS_KEY]))
        if name != cls.__name__:
            raise ValueError(f"state_dict is for {name}, not {cls.__name__}")
        obj = cls(**json.loads(str(np.asarray(state[PARAMS_KEY]))))
        obj._load_state_arrays({k: np.asarray(v) for k, v in state.items() if not k.startswith("__")})
        obj._next_index = int(np.asarray(state.get(NEXT_INDEX_KEY, 0)))
        return obj


def _recording_params(cls: type, init):
    """Wrap ``cls.__init__`` so that the arguments of the outermost constructor become ``_params``."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args: Any, **kwargs: Any) -> None:
        if type(self) is cls:  # a subclass's own constructor records its own arguments
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            self._params = to_jsonable({k: v for k, v in bound.arguments.items() if k != "self"})
        init(self, *args, **kwargs)

    return wrapper


def _norm(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)
