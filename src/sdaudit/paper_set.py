"""The paper's image set in the paper's order, so that the published anomaly labels point at the right images.

The published labels (``[image_index, x, y]`` rows) index the authors' saved set: the Hugging Face
``imagenet-1k`` train split streamed in order, every image of classes 235, 242, 282, 717, 980 whose short
side is at least 350 px appended until each class had 100, so the classes are interleaved. Each image was
cropped with ``img.crop((w//2 - s//2, h//2 - s//2, w//2 + s//2, h//2 + s//2))`` (s = short side; an
(s-1)-pixel square for odd s) and resized to 512 x 512 with PIL's default filter (bicubic for RGB).

:func:`published_crop` is that arithmetic. ``sdaudit dataset imagenet-subset`` names its files by their
selection index (``000_235_n02106662.png``), so a folder's sorted order is the selection order, and records
in its manifest how that order came about: ``"stream"`` (a ``datasets`` source: the published order, if it
is the published stream), ``"order-file"`` (a local folder ordered by a list of file names in the
published order) or ``"folder"`` (a local folder without one: class by class, not the published order).
:func:`check_paper_order` refuses the published labels for anything but a complete paper-order set.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image

from .analyses.labels import LabelFileError
from .errors import UsageError

PAPER_ORDERS = ("stream", "order-file")  # manifest "order" values whose sorted files are in the published order


def published_crop(img: Image.Image, size: int) -> Image.Image:
    """The published preprocessing: the centre crop box (w//2 - s//2, h//2 - s//2, w//2 + s//2, h//2 + s//2)
    with s the short side, then ``resize((size, size))`` with PIL's default filter."""
    w, h = img.size
    s = min(w, h)
    box = (w // 2 - s // 2, h // 2 - s // 2, w // 2 + s // 2, h // 2 + s // 2)
    return img.crop(box).resize((size, size))


def read_order_file(path: str | os.PathLike) -> list[str]:
    """File names in the published order, one per line (blank lines and '#' comments skipped); each is matched
    by its base name, so 'n02106662/n02106662_1234.JPEG' and 'n02106662_1234.JPEG' both work."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise FileNotFoundError(f"order file {path}: cannot be read ({error})") from error
    names = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    if not names:
        raise UsageError(f"order file {path}: lists no file names")
    bases = [Path(n).name for n in names]
    if len(set(bases)) != len(bases):
        dup = next(b for b in bases if bases.count(b) > 1)
        raise UsageError(f"order file {path}: names {dup!r} twice")
    return bases


def check_paper_order(sources: list[str], spec: str) -> None:
    """Refuse ``spec`` (a ``paper:*`` label set) unless ``sources``, in audit order, are exactly the files of one
    image set built by sdaudit in the published order, in the order of its manifest."""
    folders = {os.path.dirname(s) for s in sources}
    manifest = _manifest(next(iter(folders))) if len(folders) == 1 else None
    hint = ("build the set with 'sdaudit dataset imagenet-subset' from the imagenet-1k stream, or from a local "
            "folder with --order-file (the published order)")
    if manifest is None:
        raise LabelFileError(f"{spec}: the published labels index the paper's image set in its order; these images "
                             f"are not an image set built by sdaudit; {hint}")
    if manifest.get("order") not in PAPER_ORDERS:
        raise LabelFileError(f"{spec}: the image set in {next(iter(folders))} is in {manifest.get('order')!r} order "
                             f"(class by class), not the published order, so the labels would point at the wrong "
                             f"images; {hint}")
    listed = [e.get("file") for e in manifest.get("files", [])]
    if not manifest.get("complete", False) or [os.path.basename(s) for s in sources] != listed:
        raise LabelFileError(f"{spec}: the audited images are not exactly the files of the image set's manifest, "
                             "in its order (files added, missing or renamed?)")


def _manifest(folder: str) -> dict | None:
    from .dataset import MANIFEST_FORMAT, MANIFEST_NAME

    try:
        data = json.loads((Path(folder) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT else None
