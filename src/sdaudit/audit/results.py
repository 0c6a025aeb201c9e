"""The audit's outputs from its runs' final states: results.json, results.csv, anomalies.npy, maps.npz and
the report. The typed results are built in one place (:meth:`ResultsWriter.results`) and written by
:mod:`sdaudit.audit_results`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..audit_results import (RESULTS_NAME, AnomalySummary, AuditResults, ControlRun, LayerInfo, MapsInfo, ModelInfo,
                             Recurrence, TimestepTable, write_results, write_results_csv)
from ..audit_results.rows import as_rows
from ..models.controls import is_random_weights
from ..settings import AuditSettings
from ..store import _versions
from ..terminal import Stages
from .controls import add_beyond_columns
from .mitigations import mitigation_results
from .maps import choose_examples, choose_shown_images, compute_maps, norm_layers
from .outputs import anomalies_without_massive, anomaly_recurrence, audit_warnings, layer_results, now_iso, write_anomalies
from .run import RunOutcome
from .sources import AuditInputs
from .variants import average_over_seeds


@dataclass
class Measured:
    """The numbers of an audit, computed from its runs' states, before anything is written."""

    grids: dict
    position: dict
    borders: dict
    table: list[dict]
    controls: list[dict] = field(default_factory=list)
    timesteps: list[dict] | None = None
    detection: object = None
    recurrence: dict | None = None
    maps: dict | None = None


class ResultsWriter:
    """Writes the outputs of an audit of ``model`` on ``inputs`` with ``settings`` into ``out``."""

    def __init__(self, model, inputs: AuditInputs, settings: AuditSettings, out: Path):
        self.model, self.inputs, self.settings, self.out = model, inputs, settings, Path(out)

    def write(self, main: RunOutcome, variants: list[dict], controls: list[dict], *, report: bool = True,
              compare_paper: bool = False, stages: Stages = Stages(enabled=False)) -> dict:
        """Measure, write every output file, and return the results dict (what results.json holds);
        ``stages`` shows each step with its time."""
        with stages("fitting the probes and analyses", done="probe fits and analyses"):
            measured = self.measure(main, variants, controls)
        if measured.detection is not None:
            write_anomalies(self.out / "anomalies.npy", measured.detection)
        if "maps" in self.settings.analyses:
            with stages("computing the maps", done="maps"):
                measured.maps = MapsWriter(self.out, self.inputs.items, self.settings).write(main, measured)
        results = self.results(main, measured)
        write_results(self.out / RESULTS_NAME, results)
        write_results_csv(self.out / "results.csv", results)
        if report:
            from ..report import build_report

            with stages("drawing the figures and the report page", done="figures and report page"):
                build_report([self.out], compare_paper=compare_paper)
        return results.to_dict()

    def measure(self, main: RunOutcome, variants: list[dict], controls: list[dict]) -> Measured:
        """The per-layer tables (seed-averaged, with the controls' beyond columns), the detection, the recurrence."""
        state, settings = main.state, self.settings
        grids = {name: (shape[1], shape[2]) for name, shape in main.full.shapes.items()}
        position, borders, table = layer_results(state, grids)
        measured = Measured(grids, position, borders, table)
        measured.controls = [self._control_results(c, state, table, grids) for c in controls]
        main_timestep = [state] + [v["state"] for v in variants if v["timestep"] == settings.extraction.timestep]
        average_over_seeds(table, main_timestep)
        if settings.timesteps:
            measured.timesteps = self._timestep_tables(table, variants, grids)
        # a non-finite anomaly layer has no detection (its rows would cover only the batches before the NaN)
        if state.detector is not None and state.anomaly_layer not in state.failed:
            measured.detection = state.detector.result()
            measured.recurrence = anomaly_recurrence(state, measured.detection)
        return measured

    def results(self, main: RunOutcome, measured: Measured) -> AuditResults:
        """The audit's results (results.json): every number, with its provenance."""
        state, items = main.state, self.inputs.items
        return AuditResults(
            table=as_rows(measured.table), created=now_iso(),
            model=ModelInfo.from_dict({**self.model.identity(), "random_weights": is_random_weights(self.model),
                                       "compute_dtype": str(self.model.dtype).removeprefix("torch.")}),
            settings=self.settings.to_dict(), versions=_versions(), images=[item.ref for item in items],
            skipped_images=[{"source": s, "reason": r} for s, r in self.inputs.errors],
            layers=self._layers(main, measured), position=measured.position, borders=measured.borders,
            non_finite=state.failed, run=main.stats,
            warnings=audit_warnings(len(items), measured.table, self.settings),
            controls=[ControlRun.from_dict(c) for c in measured.controls],
            timesteps=[TimestepTable(t["timestep"], as_rows(t["table"])) for t in measured.timesteps or []],
            anomalies=self._anomalies(state, measured.detection, len(items)),
            recurrence=Recurrence.from_dict(measured.recurrence) if measured.recurrence is not None else None,
            maps=MapsInfo.from_dict(measured.maps) if measured.maps is not None else None,
            mitigations=mitigation_results(state),
            extra=dict(self.inputs.provenance))

    @staticmethod
    def _layers(main: RunOutcome, measured: Measured) -> list[LayerInfo]:
        """Each layer's place and shape: block and kind from the table, channels and token grid from the pass."""
        full = main.full
        return [LayerInfo(n, r["block"], r["kind"], full.shapes[n][0], *measured.grids[n])
                for n, r in zip(full.layers, measured.table)]

    @staticmethod
    def _anomalies(state, detection, n_images: int) -> AnomalySummary | None:
        """The detector's finds on the anomaly layer, and without its massive channels (None without a detection)."""
        if detection is None:
            return None
        return AnomalySummary(layer=state.anomaly_layer, grid=list(detection.grid), count=int(len(detection.rows)),
                              images_with=detection.images_with_anomalies, n_images=n_images,
                              params=detection.params, rows=detection.rows.tolist(),
                              scores=detection.scores.tolist(), without_massive=anomalies_without_massive(state))

    @staticmethod
    def _control_results(control: dict, state, table: list[dict], grids: dict) -> dict:
        """A control's entry in results.json: its identity and table; the model's table gets its beyond columns."""
        _, _, control_table = layer_results(control["state"], grids)
        add_beyond_columns(control_table, state, control["state"])
        if not any("beyond_" in k for row in table for k in row):
            add_beyond_columns(table, state, control["state"])
        entry = {"kind": control["kind"], "label": control["label"], "model": control["model"],
                 "table": control_table, "non_finite": control["state"].failed}
        evaluations = mitigation_results(control["state"])  # the untrained control's: references for the model's
        if evaluations:
            entry["mitigations"] = [ev.to_dict() for ev in evaluations]
        return entry

    def _timestep_tables(self, table: list[dict], variants: list[dict], grids: dict) -> list[dict]:
        """[{timestep, table}] for every timestep of the audit (seed-averaged), the main timestep first."""
        out = [{"timestep": self.settings.extraction.timestep, "table": table}]
        for timestep in self.settings.timesteps[1:]:
            states = [v["state"] for v in variants if v["timestep"] == timestep]
            _, _, rows = layer_results(states[0], grids)
            average_over_seeds(rows, states)
            out.append({"timestep": timestep, "table": rows})
        return out


class MapsWriter:
    """The qualitative maps: the shown images extracted once more (all layers), their maps saved to maps.npz."""

    def __init__(self, out: Path, items: list, settings: AuditSettings):
        self.out, self.items, self.settings = out, items, settings

    def write(self, main: RunOutcome, measured: Measured) -> dict | None:
        """maps.npz and its description for results.json. Layers with non-finite values are never shown;
        None (and no maps.npz) when every layer has them."""
        finite = [r for r in measured.table if "error" not in r]
        if not finite:
            (self.out / "maps.npz").unlink(missing_ok=True)  # an older run's maps would describe other numbers
            return None
        state = main.state
        anomaly_layer = state.anomaly_layer if state.anomaly_layer not in state.failed else None
        detection = measured.detection
        rows = detection.rows if detection is not None else np.zeros((0, 3), int)
        scores = detection.scores if detection is not None else np.zeros(0)
        shown = choose_shown_images(len(self.items), rows, scores, self.settings.n_show)
        top = None
        if len(rows):
            best = rows[int(np.argmax(scores))]
            top = (int(best[1]), int(best[2]))
        examples = choose_examples(finite, anomaly_layer, top, measured.grids,
                                   semantic_layers=main.full.model.family.semantic_layers(main.full.layers))
        shown_norms = norm_layers(finite, anomaly_layer)
        skipped: dict[str, str] = {}
        arrays = self._arrays(main.full, shown, rows, (examples, shown_norms), skipped)
        tmp = self.out / "maps.partial.npz"
        np.savez_compressed(tmp, **arrays)
        tmp.replace(self.out / "maps.npz")
        info = {"images": shown, "examples": [e for e in examples if e["key"] in arrays],
                "norm_layers": [n for n in shown_norms if n not in skipped], "anomaly_layer": anomaly_layer}
        if skipped:
            info["non_finite"] = skipped
        return info

    def _arrays(self, full, shown: list[int], rows: np.ndarray, chosen: tuple, skipped: dict) -> dict:
        """The maps of the ``shown`` images for the chosen (examples, norm layers)."""
        from ..extraction import prepare_for_model

        examples, shown_norms = chosen
        prepared = [prepare_for_model(self.items[i].load(), self.settings.extraction.size) for i in shown]
        reps = {name: t.numpy() for name, t in full.run(prepared, shown).items()}
        position_of = {img: k for k, img in enumerate(shown)}
        anomaly_rows = [[position_of[int(r[0])], int(r[1]), int(r[2])] for r in rows if int(r[0]) in position_of]
        return compute_maps(reps, examples, shown_norms, np.stack([np.asarray(p) for p in prepared]),
                            np.asarray(anomaly_rows, dtype=np.int64).reshape(-1, 3), skipped=skipped)
