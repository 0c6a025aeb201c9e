"""The command line's options, each defined once (typer ``Annotated`` aliases) and reused by every command.

A command writes ``model: Model`` (required) or ``size: Size = None`` (with its default); the flag
names, help text and range checks live here, so ``extract``, ``audit``, ``layers`` and ``explore``
cannot drift apart. Defaults stay in the command signatures, as typer's ``Annotated`` style requires.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .constants import PAPER_ANOMALY_LAYER
from .settings import ANALYSES, DEFAULT_ANALYSES, MITIGATIONS, VIEWS
from .validation import MAX_SEED, MAX_SIZE

MODEL_HELP = ("Model: sd15, sd21, sd-turbo (any usual spelling), tiny, arch:sd15, arch:sd21, a Hugging Face repo "
              "id, a local diffusers folder, or a .safetensors/.ckpt file.")
IMAGES_HELP = ("Image folder (recursive), file(s), a saved datasets folder, or hf:NAME[:SPLIT[:COLUMN]]. "
               "Repeat for several.")
BATCH_HELP = "Images per U-Net pass; 0: as many as fit in GPU memory (protocol clean; 4 on the CPU)."
SIZE_HELP = "Input size in pixels (a multiple of 64, at most 4096; default: the model's)."
LAYERS_HELP = "'paper' (45), 'all' (46), block or layer names."
#: The metavar of an on/off flag: none (typer would show '<bool>', suggesting '--skip-bad true', which a flag refuses).
FLAG = ""

# Shared by the commands that load a model and run it over images (extract, audit, layers, explore).
_images = typer.Option("--images", "-i", help=IMAGES_HELP)
Model = Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)]
Images = Annotated[list[str], _images]
OptionalImages = Annotated[Optional[list[str]], _images]
Layers = Annotated[str, typer.Option("--layers", "-l", help=LAYERS_HELP)]
Size = Annotated[Optional[int], typer.Option("--size", "-s", help=SIZE_HELP)]
Seed = Annotated[int, typer.Option("--seed", min=0, max=MAX_SEED, help="Seed of all random draws.")]
Protocol = Annotated[str, typer.Option("--protocol", help="'clean' (fixed) or 'paper' (the published quirks).")]
Prompt = Annotated[str, typer.Option("--prompt", help="Text prompt (the paper used the empty prompt).")]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", min=0, help=BATCH_HELP)]
Dtype = Annotated[str, typer.Option("--dtype", help="Storage dtype: float16 or float32.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:1, ...")]
Precision = Annotated[str, typer.Option(
    "--precision", help="Compute dtype of the denoiser and text encoders: auto (float16 on CUDA, float32 on the "
    "CPU), float16, bfloat16 or float32. Recorded with the results and the store (it changes the numbers).")]
Memory = Annotated[str, typer.Option(
    "--memory", help="Where the text encoders and VAE wait between uses: auto (free-text-encoders on a GPU, keep "
    "on the CPU), keep, free-text-encoders (to the CPU once the prompt is encoded) or offload (text encoders "
    "and VAE on the CPU, on the device only while they run). Never changes a number.")]
Revision = Annotated[Optional[str], typer.Option("--revision", help="Hugging Face revision of the model.")]
LocalFilesOnly = Annotated[bool, typer.Option("--local-files-only", metavar=FLAG,
                                              help="Never contact the Hugging Face hub.")]
SkipBad = Annotated[bool, typer.Option("--skip-bad", metavar=FLAG,
                                       help="Skip unreadable or invalid images and list them.")]
Timestep = Annotated[int, typer.Option("--timestep", "-t", min=0, max=999,
                                       help="Diffusion timestep of the added noise (0-999).")]
Debug = Annotated[bool, typer.Option("--debug", metavar=FLAG,
                                     help="Also show the traceback of an error that is the user's to "
                                     "fix (bugs always show theirs).")]


def _show_version(value: bool) -> None:
    """``--version``: print the installed version and stop before any command runs."""
    if value:
        from . import __version__

        typer.echo(f"sdaudit {__version__}")
        raise typer.Exit()


Version = Annotated[bool, typer.Option("--version", metavar=FLAG, is_eager=True, callback=_show_version,
                                       help="Print sdaudit's version and exit.")]

# extract
StoreOut = Annotated[Path, typer.Option("--out", "-o", help="Store folder; rerun with the same settings to resume.")]

# audit
AuditOut = Annotated[Path, typer.Option("--out", "-o", help="Output folder; rerun with the same settings to resume.")]
AuditStore = Annotated[Optional[Path], typer.Option("--store", help="Audit the images of an existing store, reusing "
                                                    "its representations for the full pass (instead of --images).")]
Timesteps = Annotated[str, typer.Option("--timestep", "-t", help="Diffusion timestep of the added noise (0-999); "
                                        "a list (0,50,200,500) audits each, the first is the main one.")]
Analyses = Annotated[str, typer.Option("--analyses", "-a",
                                       help=f"Comma-separated subset of: {', '.join(ANALYSES)} (default "
                                       f"{','.join(DEFAULT_ANALYSES)}; channels and correspondence are opt-in).")]
KeypointPairs = Annotated[Optional[Path], typer.Option(
    "--keypoints", help="Annotated image pairs (a JSON pair file or a folder of them; sdaudit's format or "
    "SPair-71k's): the audit also runs their images and reports keypoint PCK per layer.")]
Views = Annotated[str, typer.Option("--views", help=f"Known views the correspondence analysis matches each image to: "
                                    f"comma-separated subset of {', '.join(VIEWS)} (shift: one token of the "
                                    "coarsest audited grid).")]
Mitigations = Annotated[Optional[str], typer.Option(
    "--mitigations", help="Measure what removing an artifact buys: comma-separated subset of "
    f"{', '.join(MITIGATIONS)}; "
    "each is fitted on the position probe's training images and matching to the --views (before and after) is "
    "measured on the others, per layer. Runs the correspondence analysis too.")]
AnomalyLayer = Annotated[Optional[str], typer.Option("--anomaly-layer", help="Layer the anomaly detector runs on "
                                                     f"(default: {PAPER_ANOMALY_LAYER}, as in the paper).")]
KeepStore = Annotated[bool, typer.Option("--keep-store", metavar=FLAG,
                                         help="Also keep the full pass's representations in "
                                         "OUT/store.")]
ComparePaper = Annotated[bool, typer.Option("--compare-paper", metavar=FLAG,
                                            help="Overlay the published SD-1.5/2.1/Turbo "
                                            "curves.")]
NumProcesses = Annotated[int, typer.Option("--num-processes", min=1, help="Shard the images over this many local "
                                           "processes (one GPU each when there are enough, else CPU cores); the "
                                           "results equal a single-process run. 'accelerate launch -m sdaudit "
                                           "audit ...' shards too.")]
Probe = Annotated[str, typer.Option("--probe", help="Position probe: 'lda' (closed form, default) or 'paper' (the "
                                    "published trained probe, on a bounded sample of training tokens).")]
Control = Annotated[Optional[list[str]], typer.Option("--control", help="Rerun the same images as a control and "
                                                      "report what lies beyond it: 'untrained' (fresh weights) or "
                                                      "'circular-padding' (no zero padding). Repeat for both.")]
ControlSeed = Annotated[int, typer.Option("--control-seed", min=0, max=MAX_SEED, help="Seed of the untrained "
                                          "control's initialisation (tiny and arch:* are drawn with 0).")]
NoiseSeeds = Annotated[int, typer.Option("--noise-seeds", min=1, help="Independent noise draws per image (seeds "
                                         "SEED..SEED+K-1); the numbers are averaged and their spread reported.")]
AnomalyLabels = Annotated[Optional[str], typer.Option("--anomaly-labels", help="Measure the relative norm of these "
                                                      "anomalies instead of the detected ones: paper:sd15, "
                                                      "paper:sd21, paper:sd-turbo (the published labels; the "
                                                      "paper's 500 images) or a .npy label file.")]

# layers
LayerSelection = Annotated[str, typer.Option("--layers", "-l", help="'all', 'paper', block or layer names, comma "
                                             "separated.")]

# report
ResultDirs = Annotated[list[Path], typer.Argument(help="One or more audit output folders.")]
ReportOut = Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder of the comparison page (several "
                                                   "folders).")]
ReportComparePaper = Annotated[bool, typer.Option("--compare-paper", metavar=FLAG,
                                                  help="Overlay the published curves.")]
ReportLabel = Annotated[Optional[list[str]], typer.Option("--label", help="A run's name in a comparison, one per "
                                                          "folder in order (repeatable; default: the folder name).")]

# dataset imagenet-subset
SubsetSource = Annotated[str, typer.Argument(help="A local ImageNet train folder (<root>/<wnid>/*.JPEG), a saved "
                                             "datasets folder, or hf:NAME[:SPLIT] with 'label' and image columns.")]
SubsetOut = Annotated[Path, typer.Option("--out", "-o", help="Output folder for the PNG files and manifest.json.")]
PerClass = Annotated[int, typer.Option("--per-class", min=1, help="Images per class.")]
SubsetSize = Annotated[int, typer.Option("--size", min=1, max=MAX_SIZE, help="Output side in pixels.")]
MinSide = Annotated[int, typer.Option("--min-side", min=1, help="Skip images whose short side is smaller (pixels).")]
AllowFewer = Annotated[bool, typer.Option("--allow-fewer", metavar=FLAG,
                                          help="Write fewer images when a class runs short.")]
OrderFile = Annotated[Optional[Path], typer.Option("--order-file", help="For a local ILSVRC folder: file names in "
                                                   "the published order, one per line (the published anomaly "
                                                   "labels index that order).")]

# demo
DemoOut = Annotated[Path, typer.Option("--out", "-o", help="Folder for the demo's outputs.")]
DemoSize = Annotated[int, typer.Option("--size", help="Input size in pixels, a multiple of 64 (512 gives SD's grids "
                                       "of 64..8 tokens; 256 is faster).")]

# explore
Stores = Annotated[list[Path], typer.Argument(help="One or more store folders (made by 'sdaudit extract').")]
ExploreModel = Annotated[Optional[str], typer.Option("--model", "-m", help="The stores' model, to add dropped-in "
                                                     "images (extracted with each store's own settings). "
                                                     + MODEL_HELP)]
Port = Annotated[int, typer.Option("--port", "-p", min=1, max=65535, help="TCP port.")]
Host = Annotated[str, typer.Option("--host", help="Interface to listen on (default: this machine only).")]
AllowedHost = Annotated[Optional[list[str]], typer.Option("--allowed-host", help="A further name the explorer "
                                                          "answers to (the Host header of requests; repeatable). "
                                                          "Other names are refused (DNS rebinding); with --host "
                                                          "0.0.0.0 this machine's names and addresses are "
                                                          "accepted.")]
Labels = Annotated[Optional[list[Path]], typer.Option("--labels", help="Anomaly label file (.npy, published "
                                                      "format), one per store in order; default "
                                                      "STORE/anomaly_labels.npy.")]

# verify
StoreArg = Annotated[Path, typer.Argument(help="A store folder (made by 'sdaudit extract').")]
