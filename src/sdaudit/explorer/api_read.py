"""The explorer's read API: stores, images, features, norm and similarity maps, detections, massive
channels, presets, labels (see the table in :mod:`sdaudit.explorer.app`)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from ..analyses import NonFiniteInputError, detect_massive_channels, similarity_map
from ..analyses.channels import channel_summary
from ..analyses.similarity import reference_token
from . import deps
from .errors import ExplorerError
from .stores import image_summary

router = APIRouter(prefix="/api")


@router.get("/info")
def info(state: deps.State):
    return state.info()


@router.get("/stores/{s}/images")
def images(h: deps.Store):
    return {"store": h.index, "num_images": h.store.num_images, "images": [image_summary(e) for e in h.store.images]}


@router.get("/stores/{s}/images/{i}/input.png")
def image_png(state: deps.State, h: deps.Store, i: deps.ImageAt, size: deps.ThumbnailSize):
    return Response(state.thumbnail(h, i, size), media_type="image/png")


@router.get("/stores/{s}/features")
def features(state: deps.State, h: deps.Store, layer: deps.Layer, image: deps.Image):
    tm, (c, gh, gw) = state.features(h, layer, image)
    return Response(tm.tobytes(), media_type="application/octet-stream",
                    headers={"X-Shape": f"{c},{gh},{gw}", "X-Dtype": "float16" if tm.itemsize == 2 else "float32",
                             "X-Layout": "token-major", "X-Layer": layer, "Cache-Control": "no-store"})


@router.get("/stores/{s}/norms")
def norms(state: deps.State, h: deps.Store, layer: deps.Layer, images: deps.Images):
    maps = [state.norms(h, layer, i) for i in images]
    return {"layer": layer, "images": images, "shape": list(maps[0].shape), "maps": [m.tolist() for m in maps]}


@router.get("/stores/{s}/similarity")
def similarity(state: deps.State, h: deps.Store, layer: deps.Layer, images: deps.Images, measure: deps.Measure,
               ref: deps.Ref):
    """Maps computed with :func:`sdaudit.analyses.similarity_map`; the reference image may be outside ``images``."""
    x = state.feature_stack(h, layer, images)
    try:
        if ref.image in images:
            maps = similarity_map(x, (images.index(ref.image), ref.row, ref.col), measure, layer=layer)
        else:
            t = reference_token(state.feature_stack(h, layer, [ref.image]), 0, ref.row, ref.col, layer=layer)
            maps = similarity_map(x, t, measure, layer=layer)
    except NonFiniteInputError:
        raise  # a 409, like every non-finite layer
    except ValueError as e:
        raise ExplorerError(400, str(e)) from e  # e.g. a zero-norm reference for relative_l2_norm
    return {"layer": layer, "measure": measure, "images": images, "ref": ref._asdict(),
            "shape": list(maps.shape[1:]), "maps": maps.tolist()}


@router.get("/stores/{s}/anomalies")
def anomalies(state: deps.State, h: deps.Store, layer: deps.Layer, images: deps.Images):
    return {"layer": layer, "grid": list(h.grid(layer)), "images": images,
            "detections": {str(i): state.detections(h, layer, i) for i in images}}


@router.get("/stores/{s}/channels")
def channels(state: deps.State, h: deps.Store, layer: deps.Layer, images: deps.Images):
    """The layer's massive channels over ``images`` (:func:`sdaudit.analyses.detect_massive_channels`, its
    default rule), in the audit table's columns."""
    result = detect_massive_channels(state.feature_stack(h, layer, images), image_indices=images, layer=layer)
    return {"layer": layer, "images": images, "rule": result.rule, "threshold": result.threshold,
            **channel_summary(result)}


@router.get("/stores/{s}/presets")
def presets(state: deps.State, h: deps.Store):
    return state.presets(h)


@router.get("/stores/{s}/labels")
def labels(h: deps.Store):
    with h.labels.lock:
        return h.labels.to_json()


@router.get("/stores/{s}/labels.npy")
def labels_npy(h: deps.Store):
    name = h.labels.path.name if h.labels.path.suffix == ".npy" else "anomaly_labels.npy"
    return Response(h.labels.npy_bytes(), media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
