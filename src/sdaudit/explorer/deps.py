"""FastAPI dependencies for the parameters many endpoints share: the store, layer, image(s), token,
measure and thumbnail size of a request.

Each one checks its parameter with the lookups of :class:`~sdaudit.explorer.stores.StoreHandle` and
refuses a bad value with one 4xx message naming the parameter (``missing 'layer'``, ``unknown layer
...``, ``image index 7 out of range ...``). A malformed number (``image=1e9``) is FastAPI's own 422.
Dependencies run in the order an endpoint declares them, and the store is looked up once per request.
"""

from __future__ import annotations

from typing import Annotated, NamedTuple

from fastapi import Depends, Request

from ..analyses import MEASURES
from .errors import ExplorerError
from .state import ExplorerState
from .stores import StoreHandle

#: Accepted thumbnail sizes, in pixels per side.
THUMBNAIL_SIZES = (8, 4096)


def explorer_state(request: Request) -> ExplorerState:
    """The app's :class:`ExplorerState`."""
    return request.app.state.explorer


State = Annotated[ExplorerState, Depends(explorer_state)]


def store_handle(s: int, state: State) -> StoreHandle:
    """Path parameter ``s``: an open store's index."""
    return state.handle(s)


Store = Annotated[StoreHandle, Depends(store_handle)]


def layer_name(h: Store, layer: str | None = None) -> str:
    """Query ``layer``: one of the store's layers (any accepted spelling), as the store names it."""
    return h.layer(layer)


Layer = Annotated[str, Depends(layer_name)]


def image_index(h: Store, image: int | None = None) -> int:
    """Query ``image``: a committed image's index."""
    if image is None:
        raise ExplorerError(400, "missing 'image'")
    return h.image(image)


Image = Annotated[int, Depends(image_index)]


def image_at(h: Store, i: int) -> int:
    """Path parameter ``i``: a committed image's index."""
    return h.image(i)


ImageAt = Annotated[int, Depends(image_at)]


def image_list(h: Store, images: str | None = None) -> list[int]:
    """Query ``images``: comma-separated image indices (at most 64, repeats dropped)."""
    return h.images(images)


Images = Annotated[list[int], Depends(image_list)]


def measure_name(measure: str = "cosine") -> str:
    """Query ``measure``: one of :data:`sdaudit.analyses.MEASURES`."""
    if measure not in MEASURES:
        raise ExplorerError(400, f"unknown measure '{measure[:40]}'; choose one of {', '.join(MEASURES)}")
    return measure


Measure = Annotated[str, Depends(measure_name)]


class Reference(NamedTuple):
    """The reference token of a similarity map: image, row, col."""

    image: int
    row: int
    col: int


def reference(h: Store, layer: Layer, ref_image: int | None = None, row: int | None = None,
              col: int | None = None) -> Reference:
    """Queries ``ref_image``, ``row``, ``col``: a committed image and a token on the layer's grid."""
    if ref_image is None or row is None or col is None:
        raise ExplorerError(400, "missing reference: give ref_image, row and col")
    h.image(ref_image)
    return Reference(ref_image, *h.token(layer, row, col))


Ref = Annotated[Reference, Depends(reference)]


def thumbnail_size(size: int | None = None) -> int | None:
    """Query ``size``: a thumbnail's pixels per side (None: the full prepared input)."""
    lo, hi = THUMBNAIL_SIZES
    if size is not None and not lo <= size <= hi:
        raise ExplorerError(400, f"size must be between {lo} and {hi} pixels, got {size}")
    return size


ThumbnailSize = Annotated[int | None, Depends(thumbnail_size)]
