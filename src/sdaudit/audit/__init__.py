"""``audit``: from a model and images to results.json, figures and report.html in one call.

Outputs in ``out``: ``results.json`` (every number, with provenance), ``results.csv`` (tidy: one
row per layer and metric), ``anomalies.npy`` (published label format), ``maps.npz`` (the
qualitative maps), ``figures/`` and ``report.html``; optionally ``store/`` with the full pass's
representations (``keep_store``).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..store import _versions
from ..models.controls import is_random_weights
from .checks import check_store_model
from .controls import add_beyond_columns, run_controls
from .variants import average_over_seeds, run_variants
from .maps import choose_examples, choose_shown_images, compute_maps, norm_layers
from .outputs import (anomaly_recurrence, audit_warnings, layer_results, now_iso, write_anomalies, write_json_atomic,
                      write_tidy_csv)
from .run import ANALYSES, AuditSettings, pass_plan, run_passes
from .sources import scan_images, store_images

__all__ = ["ANALYSES", "AuditSettings", "audit", "pass_plan"]


def _store_writer(out: Path, model, extractor, settings: AuditSettings, size: int, opened: list):
    """A callback that appends the full pass's batches to ``out/store`` (skipping images already in it).

    The store (holding its writer lock) is added to ``opened``, for the caller to close.
    """
    from ..extraction.run import store_config
    from ..store import ImageEntry, create_store

    config = store_config(model, extractor, "float16", settings.batch_size)
    store = create_store(out / "store", config, extractor.shapes, dtype="float16")
    opened.append(store)

    def write(batch, images, reps):
        if batch[0].index < store.num_images:
            return  # committed before an interruption
        entries = [ImageEntry(item.index, item.source, item.sha256, item.width, item.height, "RGB", item.source_bytes)
                   for item in batch]
        arrays = {name: tensor.numpy() for name, tensor in reps.items()}
        store.write_batch(batch[0].index, arrays, entries, inputs=np.stack([np.asarray(im) for im in images]))

    return write


def audit(model, images=None, out: str | Path = "sdaudit-audit", settings: AuditSettings | None = None, *,
          store: str | Path | None = None, keep_store: bool = False, skip_bad: bool = False,
          progress: bool = True, report: bool = True, compare_paper: bool = False,
          checkpoint_seconds: float = 120.0, shard="auto") -> dict:
    """Audit ``model`` on ``images`` (or on the images of an existing ``store``) and write the results to ``out``.

    Args:
        model: a :class:`~sdaudit.models.LoadedModel` or a model spec.
        images: any image source :func:`sdaudit.images.iter_images` accepts; or None with ``store``.
        out: output folder; rerunning into it with the same settings resumes an interrupted audit.
        settings: :class:`AuditSettings` (layers, protocol, timestep, seed, analyses, ...).
        store: an existing store whose images (its prepared inputs) are audited.
        keep_store: also write the full pass's representations to ``out/store``.
        skip_bad: skip invalid images (listed in results.json) instead of stopping.
        report: draw the figures and write report.html.
        compare_paper: overlay the published curves of the matching model on the figure.
        shard: for multi-process runs, a :class:`~sdaudit.audit.distributed.Shard`; "auto" (default) joins
            the process group that ``accelerate launch`` / ``torchrun`` describe in the environment (and
            is a single-process audit otherwise); None: always a single-process audit. Each process
            audits its share of the images, the accumulators are merged, rank 0 writes the outputs and
            every process returns the same results (see :mod:`sdaudit.audit.distributed`).

    Returns the results dict that was written to results.json.
    """
    from ..models import load_model

    settings = (settings or AuditSettings()).validated()
    if shard == "auto":
        from .distributed import init_from_env

        shard = init_from_env()
    if shard is not None and keep_store:
        raise UsageError("keep_store is not supported with several processes")
    out = Path(out)
    if isinstance(model, str):
        model = load_model(model)
    errors: list = []
    opened, provenance = None, {}
    if store is not None:
        from ..store import open_store

        opened = open_store(store)
        # before anything is computed: another model's store would mix two models' numbers
        provenance["store"] = {"path": str(opened.path), "model_check": check_store_model(opened, model)}
        items = store_images(opened)
        settings.size = settings.size or opened.config["size"]
        if opened.config["protocol"] == "paper":
            settings.batch_size = opened.config["batch_size"]
    elif images is not None:
        items = scan_images(images, skip_bad=skip_bad, errors=errors)
    else:
        raise UsageError("give images or a store to audit")
    size = settings.size or model.default_size
    settings.size = size
    out.mkdir(parents=True, exist_ok=True)
    kept: list = []  # the keep_store store, whose writer lock is released when the passes end
    make_writer = (lambda extractor: _store_writer(out, model, extractor, settings, size, kept)) if keep_store else None
    full_source = _store_source(opened, settings, model) if store is not None else None
    try:
        with _progress_bar(progress and (shard is None or shard.rank == 0)) as bar:
            state, full, stats = run_passes(model, items, settings.single(), out, progress=bar.progress,
                                            checkpoint_seconds=checkpoint_seconds, make_store_writer=make_writer,
                                            full_source=full_source, shard=shard)
    finally:
        for kept_store in kept:
            kept_store.close()
    with _progress_bar(progress and (shard is None or shard.rank == 0)) as bar:
        provenance["variants"] = run_variants(model, items, settings, out, progress=bar.progress,
                                              checkpoint_seconds=checkpoint_seconds, shard=shard)
        provenance["controls"] = run_controls(model, items, settings, out, progress=bar.progress,
                                              checkpoint_seconds=checkpoint_seconds, shard=shard)
    if shard is None:
        return _finish(model, items, errors, settings, state, full, stats, out, report, compare_paper, provenance)
    state = shard.reduce_state(state)
    if shard.rank != 0:
        results = shard.broadcast(None)
        if isinstance(results, dict) and "__error__" in results:
            raise RuntimeError(f"rank 0 failed to write the results: {results['__error__']}")
        return results
    try:
        results = _finish(model, items, errors, settings, state, full, stats, out, report, compare_paper, provenance)
    except BaseException as error:
        shard.broadcast({"__error__": repr(error)})
        raise
    shard.broadcast(results)
    return results


def _finish(model, items, errors, settings, state, full, stats, out: Path, report: bool, compare_paper: bool,
            provenance: dict) -> dict:
    """Results of the final state: results.json, results.csv, anomalies.npy, maps.npz and the report."""
    grids = {name: (shape[1], shape[2]) for name, shape in full.shapes.items()}
    position, borders, table = layer_results(state, grids)
    controls = provenance.pop("controls", [])
    control_results = [_control_results(c, state, table, grids) for c in controls]
    variants = provenance.pop("variants", [])
    average_over_seeds(table, [state] + [v["state"] for v in variants if v["timestep"] == settings.timestep])
    # a non-finite anomaly layer has no detection (its rows would cover only the batches before the NaN)
    detection = state.detector.result() if state.detector is not None and state.anomaly_layer not in state.failed \
        else None
    results = {
        "format": "sdaudit-audit/1",
        "created": now_iso(),
        "model": model.identity(),
        "settings": {**asdict(settings), "layers": settings.layers if isinstance(settings.layers, str)
                     else list(settings.layers)},
        "versions": _versions(),
        "images": [_image_entry(i) for i in items],
        "skipped_images": [{"source": s, "reason": r} for s, r in errors],
        "layers": [{"name": n, "block": r["block"], "kind": r["kind"], "channels": full.shapes[n][0],
                    "height": grids[n][0], "width": grids[n][1]} for n, r in zip(full.layers, table)],
        "table": table,
        "position": position,
        "borders": borders,
        "non_finite": state.failed,
        "run": stats,
        "warnings": audit_warnings(len(items), table, settings),
        **provenance,
    }
    results["model"]["random_weights"] = is_random_weights(model)
    if control_results:
        results["control"], results["controls"] = control_results[0], control_results
    if settings.timesteps:
        results["timesteps"] = _timestep_tables(settings, table, state, variants, grids)
    if detection is not None:
        results["anomalies"] = {"layer": state.anomaly_layer, "grid": list(detection.grid),
                                "count": int(len(detection.rows)), "images_with": detection.images_with_anomalies,
                                "n_images": len(items), "params": detection.params,
                                "rows": detection.rows.tolist(), "scores": detection.scores.tolist()}
        write_anomalies(out / "anomalies.npy", detection)
        recurrence = anomaly_recurrence(state, detection)
        if recurrence is not None:
            results["recurrence"] = recurrence
    maps = _write_maps(model, full, items, settings, state, detection, table, grids, out) \
        if "maps" in settings.analyses else None
    if maps is not None:
        results["maps"] = maps
    write_json_atomic(out / "results.json", results)
    tables = [(t["timestep"], t["table"]) for t in results.get("timesteps", [])] or [(settings.timestep, table)]
    write_tidy_csv(out / "results.csv", tables, model.identity()["name"])
    if report:
        from ..report import build_report

        build_report([out], compare_paper=compare_paper)
    return results


def _control_results(control: dict, state, table: list[dict], grids: dict) -> dict:
    """A control's entry in results.json: its identity and table; the model's table gets its beyond columns."""
    _, _, control_table = layer_results(control["state"], grids)
    add_beyond_columns(control_table, state, control["state"])
    if not any("beyond_" in k for row in table for k in row):
        add_beyond_columns(table, state, control["state"])
    return {"kind": control["kind"], "label": control["label"], "model": control["model"], "table": control_table,
            "non_finite": control["state"].failed}


def _timestep_tables(settings, table: list[dict], state, variants: list[dict], grids: dict) -> list[dict]:
    """[{timestep, table}] for every timestep of the audit (seed-averaged), the main timestep first."""
    out = [{"timestep": settings.timestep, "table": table}]
    for timestep in settings.timesteps[1:]:
        states = [v["state"] for v in variants if v["timestep"] == timestep]
        _, _, rows = layer_results(states[0], grids)
        average_over_seeds(rows, states)
        out.append({"timestep": timestep, "table": rows})
    return out


def _image_entry(item) -> dict:
    """An image's record in results.json; ``source_bytes`` (hex) only for a name that is not valid UTF-8."""
    entry = {"index": item.index, "source": item.source, "sha256": item.sha256, "width": item.width,
             "height": item.height}
    if item.source_bytes:
        entry["source_bytes"] = item.source_bytes
    return entry


def _store_source(store, settings: AuditSettings, model):
    """Read the full pass from an existing store, after checking it was made with the audit's settings."""
    import torch

    from ..layers import select_layers

    config = store.config
    wanted = {"protocol": settings.protocol, "timestep": settings.timestep, "seed": settings.seed,
              "size": settings.size, "prompt": settings.prompt, "noise_samples": settings.noise_samples,
              "crop_px": 0}
    diffs = [f"{k}: store has {config.get(k)!r}, audit asks for {v!r}" for k, v in wanted.items() if config.get(k) != v]
    if settings.latent is not None and config.get("latent") != settings.latent:
        diffs.append(f"latent: store has {config.get('latent')!r}, audit asks for {settings.latent!r}")
    if diffs:
        raise UsageError(f"store '{store.path}' was extracted with other settings than this audit:\n  " + "\n  ".join(diffs))
    from ..layers import all_layers

    layers = select_layers(settings.layers, all_layers(model.unet))
    missing = [layer for layer in layers if layer not in store.layers]
    if missing:
        raise UsageError(f"store '{store.path}' lacks layers the audit needs: {', '.join(missing)}")

    def read(indices):
        return {layer: torch.from_numpy(store.read(layer, indices).astype(np.float32)) for layer in layers}

    return read


def _write_maps(model, full, items, settings, state, detection, table, grids, out: Path) -> dict | None:
    """Extract the shown images once more (all layers) and save their maps to maps.npz.

    Layers with non-finite values are never shown; None (and no maps.npz) when every layer has them.
    """
    from ..extraction import prepare_for_model

    finite = [r for r in table if "error" not in r]
    if not finite:
        (out / "maps.npz").unlink(missing_ok=True)  # an older run's maps would describe other numbers
        return None
    anomaly_layer = state.anomaly_layer if state.anomaly_layer not in state.failed else None
    rows = detection.rows if detection is not None else np.zeros((0, 3), int)
    scores = detection.scores if detection is not None else np.zeros(0)
    shown = choose_shown_images(len(items), rows, scores, settings.n_show)
    top = None
    if len(rows):
        best = rows[int(np.argmax(scores))]
        top = (int(best[1]), int(best[2]))
    examples = choose_examples(finite, anomaly_layer, top, grids)
    shown_norms = norm_layers(finite, anomaly_layer)
    prepared = [prepare_for_model(items[i].load(), settings.size) for i in shown]
    reps = {name: t.numpy() for name, t in full.run(prepared, shown).items()}
    position_of = {img: k for k, img in enumerate(shown)}
    anomaly_rows = [[position_of[int(r[0])], int(r[1]), int(r[2])] for r in rows if int(r[0]) in position_of]
    skipped: dict[str, str] = {}
    arrays = compute_maps(reps, examples, shown_norms, np.stack([np.asarray(p) for p in prepared]),
                          np.asarray(anomaly_rows, dtype=np.int64).reshape(-1, 3), skipped=skipped)
    tmp = out / "maps.partial.npz"
    np.savez_compressed(tmp, **arrays)
    tmp.replace(out / "maps.npz")
    info = {"images": shown, "examples": [e for e in examples if e["key"] in arrays],
            "norm_layers": [n for n in shown_norms if n not in skipped], "anomaly_layer": anomaly_layer}
    if skipped:
        info["non_finite"] = skipped
    return info


class _progress_bar:
    """Rich progress bars for the passes (or none)."""

    def __init__(self, enabled: bool):
        self.enabled, self.progress = enabled, None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn())
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()
        return False
