"""The ``sdaudit`` command line: a thin layer over the Python API, one function per command.

Error contract (:mod:`sdaudit.cli_contract`): a mistake the user can fix prints one line naming what is
at fault and exits with status 2; ``--debug`` adds its traceback. Any other exception is a bug: it keeps
its traceback (status 1). The options are defined once, in :mod:`sdaudit.cli_options`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table
from typer.core import TyperCommand

from .cli_clean import clean_cmd
from .cli_contract import Command, Commands, Group, err_console
from .cli_print import console, print_audit, print_extraction
from .cli_options import (AllowedHost, AllowFewer, Analyses, AnomalyLabels, AnomalyLayer, AuditOut, AuditStore,
                          BatchSize, ComparePaper, Control, ControlSeed, Debug, DemoOut, DemoSize, Device, Dtype,
                          ExploreModel, Host, Images, KeepStore, Labels, LayerSelection, Layers, LocalFilesOnly,
                          MinSide, Model, NoiseSeeds, NumProcesses, OptionalImages, OrderFile, PerClass, Port, Probe,
                          Prompt, Protocol, ReportComparePaper, ReportLabel, ReportOut, ResultDirs, Revision, Seed, Size,
                          SkipBad, StoreArg, StoreOut, Stores, SubsetOut, SubsetSize, SubsetSource, Timestep, Timesteps,
                          Views)
from .cli_options import KeypointPairs, Memory, Mitigations, Precision, Version
from .constants import PAPER_SEED, PAPER_TIMESTEP
from .errors import UsageError
from .validation import output_errors, removed_on_failure


app = typer.Typer(
    cls=Commands,
    help="Extract and audit the internal representations of latent-diffusion U-Nets "
    "(Stable Diffusion 1.5, 2.1, SD-Turbo, any diffusers UNet2DConditionModel).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
dataset_app = typer.Typer(cls=Group, help="Build image sets for audits.", no_args_is_help=True)
app.add_typer(dataset_app, name="dataset")


@app.callback()
def _global_options(debug: Debug = False, version: Version = False) -> None:
    """Options for every command (read by :class:`_Commands` when a command fails)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizers warns after a fork otherwise


def _check_options(*, out: Path | None = None, size: int | None = None, device: str | None = None,
                   images: list[str] | None = None) -> None:
    """Checks that need no model, made before one is loaded: a bad --out, --size, --device or a missing
    --images path fails at once with one line naming it, not after minutes of work (or with a MemoryError or a
    torch assertion)."""
    from .validation import check_output_dir, check_size

    for source in images or []:  # every source but a hub dataset ('hf:NAME') is a local path
        if not str(source).startswith("hf:") and not os.path.exists(source):
            raise UsageError(f"--images: image source not found: {source}")
    if out is not None:
        check_output_dir(out, name="--out")
    if size is not None:
        check_size(size, name="--size")
    if device is not None:
        from .models import resolve_device

        try:
            resolve_device(device)
        except UsageError as error:
            raise UsageError(f"--device: {error}") from None


def _sources(images: list[str] | None):
    """The image sources as the API takes them: one source as itself, several as a list."""
    return images[0] if images is not None and len(images) == 1 else images


def _model_rows() -> list[tuple[str, str, str, str, str]]:
    """(name, source, description, size, available locally) of every named model; 'locally' asks the
    Hugging Face cache as this process sees it, without a hub call."""
    from .models import REGISTRY
    from .models.hub import is_cached
    from .models.registry import OFFLINE_MODELS

    rows = [(name, source, text, str(size), "yes") for name, source, text, size in OFFLINE_MODELS]
    for entry in REGISTRY.values():
        rows.append((entry.key, entry.repo_id, entry.description, str(entry.default_size),
                     "yes" if is_cached(entry.repo_id) else "no"))
    return rows


@app.command("models")
def models_cmd() -> None:
    """List the known models, and whether each is available on this machine (no download needed)."""
    rows = _model_rows()
    # one space between columns and none at the edges, the default size under the name: the longest name
    # (sdxl-lightning-8step) and repo id (SD3's, 47 characters) fit in 80 columns
    table = Table(title="Known models", collapse_padding=True, pad_edge=False)
    table.add_column("name", no_wrap=True)
    # the repo id never wraps (it is copied into commands); the description under it wraps at its width
    table.add_column("source", min_width=max(len(source) for _, source, *_ in rows))
    table.add_column("local", no_wrap=True)
    for name, source, description, size, local in rows:
        table.add_row(f"{name}\n[dim]{size} px[/]", f"{escape(source)}\n[dim]{escape(description)}[/]", local)
    console.print(table)
    console.print("local: no download needed (built in, or in the Hugging Face cache). Also accepted: a Hugging "
                  "Face repo id, a local diffusers folder, a .safetensors/.ckpt file.")


@app.command("layers")
def layers_cmd(model: Model = "sd15", size: Size = None, layers: LayerSelection = "all") -> None:
    """Print every hookable layer with its channels and token grid (no weights needed)."""
    from .models import family_for_config, load_denoiser_config, parse_model_spec

    _check_options(size=size)
    spec = parse_model_spec(model)
    size = size or spec.default_size
    family = family_for_config(load_denoiser_config(spec))
    infos, paper = family.layer_infos(size), set(family.paper_layers())
    chosen = set(family.select_layers(layers))
    table = Table(title=f"{spec.name} at {size}x{size} px: {len(chosen)} layers")
    for column in ("#", "layer", "block", "kind", "channels", "grid", "paper"):
        table.add_column(column, justify="right" if column in ("#", "channels") else "left",
                         no_wrap=column == "layer", min_width=30 if column == "layer" else None)
    for i, info in enumerate(i for i in infos if i.name in chosen):
        table.add_row(str(i), info.name, info.block, info.kind, str(info.channels), f"{info.height}x{info.width}",
                      "yes" if info.name in paper else "")
    console.print(table)


@app.command("extract")
def extract_cmd(
    *,
    model: Model,
    images: Images,
    out: StoreOut,
    layers: Layers = "paper",
    size: Size = None,
    timestep: Timestep = PAPER_TIMESTEP,
    seed: Seed = PAPER_SEED,
    protocol: Protocol = "clean",
    prompt: Prompt = "",
    batch_size: BatchSize = 4,
    dtype: Dtype = "float16",
    device: Device = "auto",
    precision: Precision = "auto",
    memory: Memory = "auto",
    revision: Revision = None,
    local_files_only: LocalFilesOnly = False,
    skip_bad: SkipBad = False,
) -> None:
    """Extract per-layer representations of images into a resumable store."""
    from .extraction import extract
    from .models import load_model
    from .settings import ExtractionSettings

    start = time.perf_counter()
    _check_options(out=out, size=size, device=device, images=images)
    with removed_on_failure(out), output_errors(out):
        loaded = load_model(model, device=device, dtype=precision, revision=revision,
                            local_files_only=local_files_only, placement=memory)
        settings = ExtractionSettings(protocol=protocol, timestep=timestep, seed=seed, size=size, prompt=prompt)
        report = extract(loaded, _sources(images), out, settings, layers=layers, batch_size=batch_size, dtype=dtype,
                         skip_bad=skip_bad)
    print_extraction(report, out, time.perf_counter() - start)


@app.command("audit")
def audit_cmd(
    *,
    model: Model,
    images: OptionalImages = None,
    out: AuditOut,
    store: AuditStore = None,
    layers: Layers = "paper",
    size: Size = None,
    timestep: Timesteps = str(PAPER_TIMESTEP),
    seed: Seed = PAPER_SEED,
    protocol: Protocol = "clean",
    analyses: Analyses = "position,borders,anomalies,maps",
    anomaly_layer: AnomalyLayer = None,
    batch_size: BatchSize = 4,
    device: Device = "auto",
    precision: Precision = "auto",
    memory: Memory = "auto",
    revision: Revision = None,
    local_files_only: LocalFilesOnly = False,
    keep_store: KeepStore = False,
    compare_paper: ComparePaper = False,
    skip_bad: SkipBad = False,
    num_processes: NumProcesses = 1,
    probe: Probe = "lda",
    control: Control = None,
    control_seed: ControlSeed = 1,
    noise_seeds: NoiseSeeds = 1,
    anomaly_labels: AnomalyLabels = None,
    views: Views = "flip",
    keypoints: KeypointPairs = None,
    mitigations: Mitigations = None,
) -> None:
    """Run the paper's three audits (position probe, border/corner similarity, high-norm anomalies) and write
    results.json, results.csv, anomalies.npy, figures and report.html."""
    if (images is None) == (store is None):
        raise UsageError("give either --images or --store")
    start = time.perf_counter()
    _check_options(out=out, size=size, device=device, images=images)
    settings = _audit_settings(layers=layers, protocol=protocol, timestep=timestep, seed=seed, size=size,
                               analyses=analyses, anomaly_layer=anomaly_layer, batch_size=batch_size, probe=probe,
                               control=control, control_seed=control_seed, anomaly_labels=anomaly_labels,
                               noise_seeds=noise_seeds, views=views, mitigations=mitigations,
                               keypoints=str(keypoints.resolve()) if keypoints is not None else None)
    load = {"device": device, "dtype": precision, "revision": revision, "local_files_only": local_files_only,
            "placement": memory}
    run = {"store": store, "keep_store": keep_store, "skip_bad": skip_bad, "compare_paper": compare_paper}
    with removed_on_failure(out), output_errors(out):
        results, rank = _run_audit(model, _sources(images), out, settings, load=load, run=run,
                                   num_processes=num_processes)
    if rank == 0:  # every process of a launched group returns the results; one summary is enough
        print_audit(results, out, time.perf_counter() - start)


def _audit_settings(*, timestep: str, analyses: str, probe: str, control: list[str] | None, views: str = "flip",
                    mitigations: str | None = None, **fields):
    """The audit's settings from the command's options: the one place where the command line builds them.
    ``fields`` are the options named as :class:`~sdaudit.settings.AuditSettings` fields; the others are parsed."""
    from .audit import ANALYSES, AuditSettings
    from .validation import check_choices, parse_int_list

    chosen = check_choices([a.strip() for a in analyses.split(",") if a.strip()], ANALYSES, name="--analyses")
    fields["views"] = [v.strip() for v in views.split(",") if v.strip()]  # checked by AuditSettings.validated
    if mitigations is not None:  # checked by AuditSettings.validated; given but empty is refused there
        fields["mitigations"] = [m.strip() for m in mitigations.split(",") if m.strip()] or [""]
    timesteps = parse_int_list(timestep, name="--timestep")
    settings = AuditSettings(**fields, timestep=timesteps[0], timesteps=timesteps if len(timesteps) > 1 else [],
                             analyses=chosen, probe_method=probe, controls=list(control or [])).validated()
    if settings.keypoints:  # a bad pair file is refused before the model loads
        from .keypoint_pairs import load_keypoint_pairs

        load_keypoint_pairs(settings.keypoints)
    return settings


def _run_audit(model: str, sources, out: Path, settings, *, load: dict, run: dict, num_processes: int):
    """Audit in this process (joining the group of a launcher such as torchrun, if any) or sharded over
    ``num_processes`` local ones; returns the results and this process's rank (0 unless launched)."""
    from .audit import audit
    from .audit.distributed import audit_multiprocess, init_from_env
    from .models import load_model
    from .terminal import Stages

    stages = Stages(console, enabled=os.environ.get("RANK", "0") == "0")  # one process of a group speaks
    if num_processes > 1:
        return audit_multiprocess(model, sources, out, settings, num_processes=num_processes, load_kwargs=load,
                                  **run), 0
    shard = init_from_env()  # under accelerate launch / torchrun: join the group, use this process's GPU
    with stages("loading the model", done=f"model loaded ({model})"):
        loaded = load_model(model, **load)
    results = audit(loaded, sources, out, settings, console=console, **run)
    return results, 0 if shard is None else shard.rank


@app.command("report")
def report_cmd(result_dirs: ResultDirs, out: ReportOut = None, compare_paper: ReportComparePaper = False,
               label: ReportLabel = None) -> None:
    """Rebuild figures and report.html from saved results; with several folders, compare the models side by side."""
    from .report import build_report

    _check_options(out=out)
    with output_errors(out, *result_dirs):
        page = build_report(list(result_dirs), out=out, compare_paper=compare_paper, labels=label or None)
    console.print(f"report: [bold]{page}[/]")


@dataset_app.command("imagenet-subset")
def imagenet_subset_cmd(
    source: SubsetSource,
    out: SubsetOut,
    per_class: PerClass = 100,
    size: SubsetSize = 512,
    min_side: MinSide = 350,
    allow_fewer: AllowFewer = False,
    order_file: OrderFile = None,
) -> None:
    """Build the paper's image set: ImageNet classes 235, 242, 282, 717, 980, 100 each, centre-cropped, 512 px,
    in selection order (the order the published anomaly labels index)."""
    import json

    from .dataset import MANIFEST_NAME, build_imagenet_subset

    _check_options(out=out)
    with output_errors(out):
        paths = build_imagenet_subset(source, out, per_class=per_class, size=size, min_side=min_side,
                                      allow_fewer=allow_fewer, order_file=order_file)
    manifest = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
    console.print(f"[green]wrote[/] {len(paths)} images to {out}", highlight=False)
    console.print(f"order: {manifest['order']}: {manifest['order_note']}", markup=False, highlight=False)


@app.command("demo")
def demo_cmd(out: DemoOut = Path("sdaudit-demo"), size: DemoSize = 256) -> None:
    """Offline demo: the full audit of the bundled sample photos with the tiny model; ends with the report's path."""
    from .demo import run_demo

    _check_options(out=out, size=size)
    with output_errors(out):
        run_demo(out, size=size, console=console)


@app.command("explore")
def explore_cmd(
    stores: Stores,
    model: ExploreModel = None,
    port: Port = 8765,
    host: Host = "127.0.0.1",
    allowed_host: AllowedHost = None,
    labels: Labels = None,
) -> None:
    """Serve the offline web explorer: similarity and norm maps, presets, anomaly labelling."""
    from .explorer import serve

    serve(stores, model=model, host=host, port=port, labels_path=labels or None, allowed_hosts=allowed_host or [],
          echo=lambda text: console.print(text, markup=False, highlight=False))


@app.command("verify")
def verify_cmd(store: StoreArg) -> None:
    """Check every image of a store against its checksums; exit 0 when intact, 1 when damaged."""
    from .store import verify_store

    report = verify_store(store)
    for problem in report.problems:
        err_console.print(f"[bold red]damaged:[/] {problem}", highlight=False)
    for index, what in report.damaged.items():
        err_console.print(f"[bold red]damaged:[/] image {index}: {'; '.join(what)}", highlight=False)
    if not report.intact:
        what = "its records are damaged" if report.problems else \
            f"{len(report.damaged)} of {report.num_images} images damaged"
        err_console.print(f"store {store}: {what}; rerun 'sdaudit extract' with the same settings and images to "
                          "re-extract damaged images", highlight=False)
        raise typer.Exit(1)
    console.print(f"[green]intact[/] {store}: {report.num_images} images x {report.layers} layers",
                  highlight=False)


app.command("clean")(clean_cmd)


# Every command lists -h/--help as a flag (set here, once, rather than on each decorator).
for _info in (*app.registered_commands, *dataset_app.registered_commands):
    if _info.cls in (None, TyperCommand):
        _info.cls = Command
