"""Hugging Face ``datasets`` sources: a dataset object, a ``save_to_disk`` folder or ``"hf:NAME[:SPLIT[:COL]]"``,
opened to one split and one image column, with automatic decoding switched off (sdaudit decodes and
validates every cell itself, see :func:`~sdaudit.images.decode.decode_dataset_value`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SdauditError
from .folders import is_saved_dataset
from .records import ImageSourceError


@dataclass
class DatasetSource:
    """A ``datasets`` dataset ready to read: one split, the image column found, a display name."""

    dataset: Any
    name: str
    split: str
    image_column: str


def parse_hf_spec(spec: str) -> tuple[str, str | None, str | None]:
    """``"hf:NAME[:SPLIT[:IMAGE_COLUMN]]"`` -> (name, split or None, column or None)."""
    parts = spec[len("hf:"):].split(":")
    if not parts[0] or len(parts) > 3:
        raise ImageSourceError(f"bad dataset source {spec!r}; expected hf:NAME[:SPLIT[:IMAGE_COLUMN]]")
    parts += [""] * (3 - len(parts))
    return parts[0], parts[1] or None, parts[2] or None


def _pick_split(dsdict: Any, split: str | None, name: str) -> tuple[Any, str]:
    """Select a split of a DatasetDict: the given one, else 'train', else the only one."""
    names = list(dsdict.keys())
    if split is None:
        if "train" in names:
            split = "train"
        elif len(names) == 1:
            split = names[0]
        else:
            raise ImageSourceError(f"dataset {name} has splits {names}; name one (hf:NAME:SPLIT)")
    if split not in names:
        raise ImageSourceError(f"dataset {name} has no split {split!r}; available: {names}")
    return dsdict[split], split


def _detect_image_column(features: Any, name: str) -> str:
    """The first column whose feature type is ``datasets.Image``; else a ValueError."""
    import datasets

    if features is None:
        raise ImageSourceError(f"dataset {name} has unknown features; name the image column "
                         "(hf:NAME:SPLIT:IMAGE_COLUMN)")
    for col, feat in features.items():
        if isinstance(feat, datasets.Image):
            return col
    described = ", ".join(f"{c} ({type(f).__name__})" for c, f in features.items())
    raise ImageSourceError(f"dataset {name} has no column of type datasets.Image; columns: "
                     f"{described}. Name the image column (hf:NAME:SPLIT:IMAGE_COLUMN)")


def open_dataset_source(source: Any, *, split: str | None = None,
                        image_column: str | None = None) -> DatasetSource:
    """Open a ``datasets`` source: object, ``save_to_disk`` folder, or ``"hf:NAME[:SPLIT[:COL]]"``.

    ``hf:`` names that are ``save_to_disk`` folders use ``load_from_disk``, others
    ``datasets.load_dataset(NAME, split=SPLIT)`` (SPLIT defaults to ``"train"``). The image
    column must exist; if not given, the first ``datasets.Image`` column is used.
    """
    import datasets

    if isinstance(source, str) and source.startswith("hf:"):
        name, spec_split, spec_col = parse_hf_spec(source)
        split, image_column = split or spec_split, image_column or spec_col
        if not is_saved_dataset(Path(name).expanduser()):
            split = split or "train"
            return _finish_dataset_source(_load_hub(source, name, split), name, split, image_column)
        source = name
    if is_datasets_object(source):
        name = getattr(getattr(source, "info", None), "dataset_name", None) or (
            f"dataset-{str(getattr(source, '_fingerprint', 'memory'))[:16]}")
        return _finish_dataset_source(source, name, split, image_column)
    local = Path(source).expanduser()
    if not is_saved_dataset(local):
        raise ImageSourceError(f"{os.path.abspath(local)} is not a datasets save_to_disk folder")
    return _finish_dataset_source(datasets.load_from_disk(str(local)), os.path.abspath(local), split, image_column)


def _load_hub(source: str, name: str, split: str) -> Any:
    """``datasets.load_dataset(name, split=split)``; offline without a cached copy: a user error."""
    import datasets

    try:
        return datasets.load_dataset(name, split=split)
    except ConnectionError as error:  # offline, or the Hub unreachable: datasets found no local copy
        raise SdauditError(f"dataset '{source}' is not in the local Hugging Face cache and the Hub cannot "
                           f"be reached ({error}); load it once with internet access or pass a "
                           "save_to_disk folder") from None


def _finish_dataset_source(ds: Any, name: str, split: str | None,
                           image_column: str | None) -> DatasetSource:
    """Pick the split, check/detect the image column, and switch off automatic decoding."""
    import datasets

    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        ds, split = _pick_split(ds, split, name)
    split = split or (str(ds.split) if getattr(ds, "split", None) is not None else "all")
    features = ds.features
    if image_column is None:
        image_column = _detect_image_column(features, name)
    elif features is not None and image_column not in features:
        raise ImageSourceError(f"dataset {name} has no column {image_column!r}; columns: "
                         f"{list(features)}")
    if features is not None and isinstance(features[image_column], datasets.Image):
        ds = ds.cast_column(image_column, datasets.Image(decode=False))
    if isinstance(ds, datasets.Dataset):
        ds = ds.with_format(None)
    return DatasetSource(ds, name, split, image_column)




def is_datasets_object(obj: Any) -> bool:
    """True for an object of the ``datasets`` library (checked by module, without importing it)."""
    return type(obj).__module__.split(".")[0] == "datasets"


