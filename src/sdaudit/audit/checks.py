"""Checks an audit makes before it computes anything: that an existing store was made by the audit's model."""

from __future__ import annotations

# The identity fields that name a model's weights when no weights hash is known on both sides.
_NAMING_FIELDS = ("name", "kind", "location", "revision")


def _describe(identity: dict) -> str:
    """One-line description of a model identity (LoadedModel.identity())."""
    parts = [f"{identity.get('name')!s} ({identity.get('kind')}: {identity.get('location')}"]
    if identity.get("revision"):
        parts.append(f", revision {identity['revision']}")
    sha = identity.get("weights_sha256")
    parts.append(f", weights sha256 {sha[:12]}...)" if sha else ", weights sha256 unknown)")
    return "".join(parts)


def check_raw_store(store) -> None:
    """Refuse a cleaned store (``sdaudit clean``): the audit measures a model's raw representations, and a
    transform fitted on all of a store's images would leak the probe's test images into its fit. The effect of a
    mitigation is measured by ``--mitigations`` on raw features, fitted on training images only."""
    from ..store import StoreConfigMismatch

    transforms = store.config.get("transforms") or []
    if transforms:
        kinds = ", ".join(f"{t.get('kind')} on {t.get('layer')}" for t in transforms)
        raise StoreConfigMismatch(
            f"store '{store.path}' holds cleaned features ({kinds}); audit the raw store it was made from, and "
            "measure a mitigation's effect with --mitigations")


def check_store_model(store, model) -> str:
    """Refuse a store that another model made (its representations would be mixed with this model's).

    The weights hash decides when both sides have one. When either lacks it (hub models without a hash,
    ``arch:*`` random weights, older stores), name, kind, location and revision must all match, and the
    returned note says that the weights themselves could not be compared. Returns that note (recorded in
    results.json). Raises :class:`~sdaudit.store.StoreConfigMismatch` naming both models and the store.
    """
    from ..store import StoreConfigMismatch

    made_by = store.config.get("model") or {}
    audit_by = model.identity()
    have, want = made_by.get("weights_sha256"), audit_by.get("weights_sha256")
    if have and want:
        same, note = have == want, "weights sha256 of the store's model equals the audit's model"
    else:
        same = all(made_by.get(k) == audit_by.get(k) for k in _NAMING_FIELDS)
        note = ("weights sha256 unknown for " + ("the store's model" if not have else "the audit's model")
                + f"; compared {', '.join(_NAMING_FIELDS)} only")
    if not same:
        raise StoreConfigMismatch(
            f"store '{store.path}' was made by model {_describe(made_by)}, but this audit uses model "
            f"{_describe(audit_by)}; audit with the store's model, or use --images to extract with this one")
    stored, running = store.config.get("compute_dtype"), str(model.dtype).removeprefix("torch.")
    if stored is not None and stored != running:  # older stores did not record it
        raise StoreConfigMismatch(
            f"store '{store.path}' was extracted in {stored}, but this audit computes in {running}: the cropped "
            f"passes would not match the stored full pass; rerun with --precision {stored} (and the store's device)")
    return note
