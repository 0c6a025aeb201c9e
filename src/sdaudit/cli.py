"""The ``sdaudit`` command line: a thin layer over the Python API, one function per command."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .validation import MAX_SEED, output_errors
from .validation import MAX_SIZE as MAX_SIDE

app = typer.Typer(
    help="Extract and audit the internal representations of latent-diffusion U-Nets "
    "(Stable Diffusion 1.5, 2.1, SD-Turbo, any diffusers UNet2DConditionModel).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
dataset_app = typer.Typer(help="Build image sets for audits.", no_args_is_help=True)
app.add_typer(dataset_app, name="dataset")
console = Console()
err_console = Console(stderr=True)

MODEL_HELP = ("Model: sd15, sd21, sd-turbo (any usual spelling), tiny, arch:sd15, arch:sd21, a Hugging Face repo "
              "id, a local diffusers folder, or a .safetensors/.ckpt file.")
BATCH_HELP = "Images per U-Net pass; 0: as many as fit in GPU memory (protocol clean; 4 on the CPU)."
SIZE_HELP = "Input size in pixels (a multiple of 64, at most 4096; default: the model's)."


def _fail(message: str, code: int = 2) -> None:
    # soft_wrap: the message stays one line in logs and pipes (rich would break it at 80 columns)
    # escaped: a file name such as '[red]x.png' is printed as it is, not read as rich markup
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _user_errors():
    """The exception types that are the user's to fix: printed as one clear message, no traceback."""
    from .errors import SdauditError
    from .images import BadImageError
    from .layers import LayerError
    from .models import ModelNotAvailableError, ModelSpecError
    from .store import StoreError

    return (SdauditError, BadImageError, LayerError, ModelNotAvailableError, ModelSpecError, StoreError,
            FileNotFoundError, ValueError)


def _check_options(*, out: Path | None = None, size: int | None = None, device: str | None = None) -> None:
    """Checks that need no model, made before one is loaded: a bad --out, --size or --device fails at once
    with one line naming it, not after minutes of work (or with a MemoryError or a torch assertion)."""
    from .validation import check_output_dir, check_size

    if out is not None:
        check_output_dir(out, name="--out")
    if size is not None:
        check_size(size, name="--size")
    if device is not None:
        from .models import resolve_device

        resolve_device(device)


@app.command("models")
def models_cmd() -> None:
    """List the known models and the offline ones."""
    from .models import REGISTRY

    table = Table(title="Known models")
    for column in ("name", "source", "size", "notes"):
        table.add_column(column)
    table.add_row("tiny", "built in (no download)", "256", "SD-1.5 block layout, tiny channels, deterministic random weights")
    table.add_row("arch:sd15", "bundled config (no download)", "512", "SD-1.5 architecture, random weights")
    table.add_row("arch:sd21", "bundled config (no download)", "512", "SD-2.1 architecture, random weights")
    for entry in REGISTRY.values():
        table.add_row(entry.key, entry.repo_id, str(entry.default_size), entry.description)
    console.print(table)
    console.print("Also accepted: a Hugging Face repo id, a local diffusers folder, a .safetensors/.ckpt file.")


@app.command("layers")
def layers_cmd(
    model: str = typer.Option("sd15", "--model", "-m", help=MODEL_HELP),
    size: Optional[int] = typer.Option(None, "--size", "-s", help=SIZE_HELP),
    layers: str = typer.Option("all", "--layers", "-l", help="'all', 'paper', block or layer names, comma separated."),
) -> None:
    """Print every hookable layer with its channels and token grid (no weights needed)."""
    try:
        _check_options(size=size)
        from .layers import PAPER_OMITTED, layer_infos, select_layers
        from .models import load_unet_config, parse_model_spec

        spec = parse_model_spec(model)
        size = size or spec.default_size
        infos = layer_infos(load_unet_config(spec), size)
        chosen = set(select_layers(layers, [i.name for i in infos]))
    except _user_errors() as error:
        _fail(str(error))
    table = Table(title=f"{spec.name} at {size}x{size} px: {len(chosen)} layers")
    for column in ("#", "layer", "block", "kind", "channels", "grid", "paper"):
        table.add_column(column, justify="right" if column in ("#", "channels") else "left",
                         no_wrap=column == "layer", min_width=30 if column == "layer" else None)
    for i, info in enumerate(i for i in infos if i.name in chosen):
        table.add_row(str(i), info.name, info.block, info.kind, str(info.channels), f"{info.height}x{info.width}",
                      "" if info.name in PAPER_OMITTED else "yes")
    console.print(table)


@app.command("extract")
def extract_cmd(
    model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    images: list[str] = typer.Option(..., "--images", "-i", help="Image folder (recursive), file(s), a saved "
                                     "datasets folder, or hf:NAME[:SPLIT[:COLUMN]]. Repeat for several."),
    out: Path = typer.Option(..., "--out", "-o", help="Store folder; rerun with the same settings to resume."),
    layers: str = typer.Option("paper", "--layers", "-l", help="'paper' (45), 'all' (46), block or layer names."),
    size: Optional[int] = typer.Option(None, "--size", "-s", help=SIZE_HELP),
    timestep: int = typer.Option(50, "--timestep", "-t", min=0, max=999,
                                 help="Diffusion timestep of the added noise (0-999)."),
    seed: int = typer.Option(42, "--seed", min=0, max=MAX_SEED, help="Seed of all random draws."),
    protocol: str = typer.Option("clean", "--protocol", help="'clean' (fixed) or 'paper' (the published quirks)."),
    prompt: str = typer.Option("", "--prompt", help="Text prompt (the paper used the empty prompt)."),
    batch_size: int = typer.Option(4, "--batch-size", "-b", min=0, help=BATCH_HELP),
    dtype: str = typer.Option("float16", "--dtype", help="Storage dtype: float16 or float32."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, ..."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hugging Face revision of the model."),
    local_files_only: bool = typer.Option(False, "--local-files-only", help="Never contact the Hugging Face hub."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable or invalid images and list them."),
) -> None:
    """Extract per-layer representations of images into a resumable store."""
    from .extraction import extract
    from .models import load_model
    from .settings import ExtractionSettings

    sources = images[0] if len(images) == 1 else images
    start = time.perf_counter()
    try:
        _check_options(out=out, size=size, device=device)
        with output_errors(out):
            loaded = load_model(model, device=device, revision=revision, local_files_only=local_files_only)
            settings = ExtractionSettings(protocol=protocol, timestep=timestep, seed=seed, size=size, prompt=prompt)
            report = extract(loaded, sources, out, settings, layers=layers, batch_size=batch_size, dtype=dtype,
                             skip_bad=skip_bad)
    except _user_errors() as error:
        _fail(str(error))
    elapsed = time.perf_counter() - start
    store = report.store
    console.print(f"[green]store[/] {store.path}: {store.num_images} images x {len(store.layers)} layers "
                  f"({report.added} added, {report.already_present} already present) in {elapsed:.1f} s")
    _print_errors(report.errors)
    if report.repaired:
        console.print(f"repaired {len(report.repaired)} damaged image(s) in place: {report.repaired[:20]}")
    if report.unrepaired:
        err_console.print(f"[yellow]{len(report.unrepaired)} damaged image(s) not repaired[/] (their images were not "
                          f"given): {list(report.unrepaired)[:20]}; see 'sdaudit verify {out}'", highlight=False)


@app.command("audit")
def audit_cmd(
    model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    images: Optional[list[str]] = typer.Option(None, "--images", "-i", help="Image folder, file(s), saved datasets "
                                               "folder or hf:NAME[:SPLIT[:COLUMN]]. Repeat for several."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder; rerun with the same settings to resume."),
    store: Optional[Path] = typer.Option(None, "--store", help="Audit the images of an existing store, reusing its "
                                         "representations for the full pass (instead of --images)."),
    layers: str = typer.Option("paper", "--layers", "-l", help="'paper' (45), 'all' (46), block or layer names."),
    size: Optional[int] = typer.Option(None, "--size", "-s", help=SIZE_HELP),
    timestep: str = typer.Option("50", "--timestep", "-t", help="Diffusion timestep of the added noise (0-999); "
                                 "a list (0,50,200,500) audits each, the first is the main one."),
    seed: int = typer.Option(42, "--seed", min=0, max=MAX_SEED, help="Seed of all random draws."),
    protocol: str = typer.Option("clean", "--protocol", help="'clean' (fixed) or 'paper' (the published quirks)."),
    analyses: str = typer.Option("position,borders,anomalies,maps", "--analyses", "-a",
                                 help="Comma-separated subset of: position, borders, anomalies, maps."),
    anomaly_layer: Optional[str] = typer.Option(None, "--anomaly-layer", help="Layer the anomaly detector runs on "
                                                "(default: up_blocks[1].upsamplers[0], as in the paper)."),
    batch_size: int = typer.Option(4, "--batch-size", "-b", min=0, help=BATCH_HELP),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, ..."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hugging Face revision of the model."),
    local_files_only: bool = typer.Option(False, "--local-files-only", help="Never contact the Hugging Face hub."),
    keep_store: bool = typer.Option(False, "--keep-store", help="Also keep the full pass's representations in OUT/store."),
    compare_paper: bool = typer.Option(False, "--compare-paper", help="Overlay the published SD-1.5/2.1/Turbo curves."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable or invalid images and list them."),
    num_processes: int = typer.Option(1, "--num-processes", min=1,
                                      help="Shard the images over this many local processes (one GPU each when "
                                      "there are enough, else CPU cores); the results equal a single-process run. "
                                      "'accelerate launch -m sdaudit audit ...' shards too."),
    probe: str = typer.Option("lda", "--probe", help="Position probe: 'lda' (closed form, default) or 'paper' (the "
                              "published trained probe, on a bounded sample of training tokens)."),
    control: Optional[list[str]] = typer.Option(None, "--control", help="Rerun the same images as a control and "
                                                "report what lies beyond it: 'untrained' (fresh weights) or "
                                                "'circular-padding' (no zero padding). Repeat for both."),
    control_seed: int = typer.Option(1, "--control-seed", min=0, max=MAX_SEED,
                                     help="Seed of the untrained control's initialisation (tiny and arch:* are drawn "
                                     "with 0)."),
    noise_seeds: int = typer.Option(1, "--noise-seeds", min=1, help="Independent noise draws per image (seeds "
                                    "SEED..SEED+K-1); the numbers are averaged and their spread reported."),
    anomaly_labels: Optional[str] = typer.Option(None, "--anomaly-labels", help="Measure the relative norm of these "
                                                 "anomalies instead of the detected ones: paper:sd15, paper:sd21, "
                                                 "paper:sd-turbo (the published labels; the paper's 500 images) or a "
                                                 ".npy label file."),
) -> None:
    """Run the paper's three audits (position probe, border/corner similarity, high-norm anomalies) and write
    results.json, results.csv, anomalies.npy, figures and report.html."""
    from .audit import ANALYSES, AuditSettings, audit
    from .models import load_model
    from .validation import check_choices, parse_int_list

    if (images is None) == (store is None):
        _fail("give either --images or --store")
    start = time.perf_counter()
    shard = None
    try:
        _check_options(out=out, size=size, device=device)
        chosen = check_choices([a.strip() for a in analyses.split(",") if a.strip()], ANALYSES, name="--analyses")
        timesteps = parse_int_list(timestep, name="--timestep")
        settings = AuditSettings(layers=layers, protocol=protocol, timestep=timesteps[0], seed=seed, size=size,
                                 analyses=chosen, anomaly_layer=anomaly_layer, batch_size=batch_size,
                                 probe_method=probe, controls=list(control or []), control_seed=control_seed,
                                 anomaly_labels=anomaly_labels, timesteps=timesteps if len(timesteps) > 1 else [],
                                 noise_seeds=noise_seeds).validated()
        sources = None if images is None else (images[0] if len(images) == 1 else images)
        with output_errors(out):
            if num_processes > 1:
                from .audit.distributed import audit_multiprocess

                results = audit_multiprocess(model, sources, out, settings, num_processes=num_processes,
                                             load_kwargs={"device": device, "revision": revision,
                                                          "local_files_only": local_files_only},
                                             store=store, keep_store=keep_store, skip_bad=skip_bad,
                                             compare_paper=compare_paper)
            else:
                from .audit.distributed import init_from_env

                shard = init_from_env()  # under accelerate launch / torchrun: join the group, use this process's GPU
                loaded = load_model(model, device=device, revision=revision, local_files_only=local_files_only)
                results = audit(loaded, sources, out, settings, store=store, keep_store=keep_store, skip_bad=skip_bad,
                                compare_paper=compare_paper)
    except _user_errors() as error:
        _fail(str(error))
    if shard is not None and shard.rank != 0:
        return  # every process of a launched group returns the results; one summary is enough
    settings = results.get("settings", {})
    runs = len(settings.get("timesteps") or [0]) * settings.get("noise_seeds", 1) + len(results.get("controls", []))
    per_run = f" in each of {runs} runs (timesteps, noise seeds, controls)" if runs > 1 else ""
    console.print(f"[green]audited[/] {len(results['images'])} images x {len(results['layers'])} layers "
                  f"with {results['run']['unet_passes_per_image']} U-Net passes per image{per_run} "
                  f"in {time.perf_counter() - start:.1f} s")
    _print_caveats(results)
    _print_errors([(e["source"], e["reason"]) for e in results["skipped_images"]])
    if results.get("non_finite"):  # named here too: these layers have no numbers, maps or figures
        err_console.print(f"[yellow]{len(results['non_finite'])} layer(s) with NaN/Inf values, not analysed:[/] "
                          + escape(", ".join(results["non_finite"])), highlight=False)
    console.print(f"report: [bold]{Path(out) / 'report.html'}[/]")


@app.command("report")
def report_cmd(
    result_dirs: list[Path] = typer.Argument(..., help="One or more audit output folders."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder of the comparison page (several folders)."),
    compare_paper: bool = typer.Option(False, "--compare-paper", help="Overlay the published curves."),
) -> None:
    """Rebuild figures and report.html from saved results; with several folders, compare the models side by side."""
    from .report import build_report

    try:
        _check_options(out=out)
        with output_errors(out, *result_dirs):
            page = build_report(list(result_dirs), out=out, compare_paper=compare_paper)
    except (*_user_errors(), KeyError) as error:
        _fail(str(error))
    console.print(f"report: [bold]{page}[/]")


def _print_caveats(results: dict) -> None:
    """What qualifies every number: random weights, controls run, the audit's own warnings."""
    from .audit.caveats import caveats

    for line in caveats(results):
        err_console.print(line, markup=False, highlight=False, soft_wrap=True)


def _print_errors(errors) -> None:
    if errors:
        err_console.print(f"[yellow]{len(errors)} image(s) skipped:[/]")
        for source, reason in errors:
            err_console.print(f"  {escape(str(source))}: {escape(str(reason))}", highlight=False)


@dataset_app.command("imagenet-subset")
def imagenet_subset_cmd(
    source: str = typer.Argument(..., help="A local ImageNet train folder (<root>/<wnid>/*.JPEG), a saved "
                                 "datasets folder, or hf:NAME[:SPLIT] with 'label' and image columns."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for the PNG files and manifest.json."),
    per_class: int = typer.Option(100, "--per-class", min=1, help="Images per class."),
    size: int = typer.Option(512, "--size", min=1, max=MAX_SIDE, help="Output side in pixels."),
    min_side: int = typer.Option(350, "--min-side", min=1, help="Skip images whose short side is smaller (pixels)."),
    allow_fewer: bool = typer.Option(False, "--allow-fewer", help="Write fewer images when a class runs short."),
    order_file: Optional[Path] = typer.Option(None, "--order-file", help="For a local ILSVRC folder: file names in "
                                              "the published order, one per line (the published anomaly labels "
                                              "index that order)."),
) -> None:
    """Build the paper's image set: ImageNet classes 235, 242, 282, 717, 980, 100 each, centre-cropped, 512 px,
    in selection order (the order the published anomaly labels index)."""
    import json

    from .dataset import MANIFEST_NAME, build_imagenet_subset

    try:
        _check_options(out=out)
        with output_errors(out):
            paths = build_imagenet_subset(source, out, per_class=per_class, size=size, min_side=min_side,
                                          allow_fewer=allow_fewer, order_file=order_file)
    except (*_user_errors(), KeyError) as error:
        _fail(str(error))
    manifest = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
    console.print(f"[green]wrote[/] {len(paths)} images to {out}", highlight=False)
    console.print(f"order: {manifest['order']}: {manifest['order_note']}", markup=False, highlight=False)


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("sdaudit-demo"), "--out", "-o", help="Folder for the demo's outputs."),
    size: int = typer.Option(256, "--size", help="Input size in pixels, a multiple of 64 (512 gives SD's grids of "
                             "64..8 tokens; 256 is faster)."),
) -> None:
    """Offline demo: the full audit of the bundled sample photos with the tiny model; ends with the report's path."""
    from .demo import run_demo

    try:
        _check_options(out=out, size=size)
        with output_errors(out):
            run_demo(out, size=size, console=console)
    except _user_errors() as error:
        _fail(str(error))


@app.command("explore")
def explore_cmd(
    stores: list[Path] = typer.Argument(..., help="One or more store folders (made by 'sdaudit extract')."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="The stores' model, to add dropped-in images "
                                        "(extracted with each store's own settings). " + MODEL_HELP),
    port: int = typer.Option(8765, "--port", "-p", min=1, max=65535, help="TCP port."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (default: this machine only)."),
    allowed_host: Optional[list[str]] = typer.Option(None, "--allowed-host", help="A further name the explorer "
                                                     "answers to (the Host header of requests; repeatable). Other "
                                                     "names are refused (DNS rebinding); with --host 0.0.0.0 this "
                                                     "machine's names and addresses are accepted."),
    labels: Optional[list[Path]] = typer.Option(None, "--labels", help="Anomaly label file (.npy, published "
                                                "format), one per store in order; default STORE/anomaly_labels.npy."),
) -> None:
    """Serve the offline web explorer: similarity and norm maps, presets, anomaly labelling."""
    from .analyses import LabelFileError
    from .explorer import serve

    try:
        serve(stores, model=model, host=host, port=port, labels_path=labels or None, allowed_hosts=allowed_host or [],
              echo=lambda text: console.print(text, markup=False, highlight=False))
    except (*_user_errors(), LabelFileError, OSError) as error:
        _fail(str(error))


@app.command("verify")
def verify_cmd(store: Path = typer.Argument(..., help="A store folder (made by 'sdaudit extract').")) -> None:
    """Check every image of a store against its checksums; exit 0 when intact, 1 when damaged."""
    from .store import verify_store

    try:
        report = verify_store(store)
    except _user_errors() as error:
        _fail(str(error))
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
    note = "" if report.verifiable else (" (format 1, without checksums: every row is readable, but its "
                                         "contents cannot be verified)")
    console.print(f"[green]intact[/] {store}: {report.num_images} images x {report.layers} layers{note}",
                  highlight=False)


def main() -> None:  # pragma: no cover - console entry point
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
