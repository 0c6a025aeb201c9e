"""Issue 15's "Done when" table: matching accuracy and positional-bias rate before/after each mitigation, per block.

Two models:

* ``tiny`` (random weights) on the bundled demo photos: each photo and four 75 % corner crops of it (45
  images, prepared to the model's size), extracted with :class:`sdaudit.extraction.Extractor` (protocol
  ``clean``), and their horizontal flips with independent noise (the view of image i is extracted as image
  i + 45: a view with the image's noise at the same absolute positions would match every token to its own
  position through the shared noise alone; ``--shared-noise`` shows that); per block, the block's
  last layer (its output) is evaluated with :class:`sdaudit.mitigations.evaluate.MitigationEvaluator`: the
  first 20 images fit the mitigations, the other 25 measure.
* a planted-signal model (:mod:`sdaudit.analyses.synthetic`), three "blocks" of 120 images each:
  ``planted_position`` (content + a positional code, view = the flipped content plus noise + the same
  code), ``planted_anomalies`` (2x2 high-norm patches that move with the content) and ``planted_channels``
  (content + a channel 100x the others on every token); 60 fit, 60 measure.

Usage: ``PYTHONPATH=src python benchmarks/mitigation_table.py [--skip-tiny] [--n-boot 1000]``; prints the
tables (and the verdicts with ``--verdicts``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from sdaudit.analyses.synthetic import anomaly_features, positional_code
from sdaudit.analyses.views import flip_correspondence, flip_view
from sdaudit.mitigations.evaluate import evaluate_mitigations
from sdaudit.report.mitigations import mitigation_text_table

MITIGATIONS = ["position", "position-subspace", "anomalies", "channels", "border"]
CROP = 0.75


def demo_images(size: int) -> list:
    """The demo photos and their four corner crops of ``CROP`` of each side, prepared to ``size`` px."""
    from PIL import Image

    from sdaudit.extraction.run import prepare_for_model
    from sdaudit.images.demo import demo_image_paths

    out = []
    for path in demo_image_paths():
        img = Image.open(path).convert("RGB")
        w, h = img.size
        cw, ch = int(w * CROP), int(h * CROP)
        boxes = [(0, 0, cw, ch), (w - cw, 0, w, ch), (0, h - ch, cw, h), (w - cw, h - ch, w, h)]
        out += [prepare_for_model(im, size) for im in [img, *(img.crop(b) for b in boxes)]]
    return out


def block_outputs(infos) -> list[str]:
    """The last layer of each block, in execution order."""
    last: dict[str, str] = {}
    for info in infos:
        last[info.block] = info.name
    return list(last.values())


def tiny_evaluations(n_boot: int, n_train: int = 20, shared_noise: bool = False) -> list:
    from sdaudit.extraction.extractor import Extractor
    from sdaudit.models import load_model

    model = load_model("tiny", device="cpu")
    size = model.default_size
    layers = block_outputs(model.family.layer_infos(size))
    extractor = Extractor(model, layers)
    images = demo_images(size)
    idx = list(range(len(images)))
    feats = {k: [] for k in layers}
    views = {k: [] for k in layers}
    for lo in range(0, len(images), 8):
        batch, bidx = images[lo:lo + 8], idx[lo:lo + 8]
        vidx = bidx if shared_noise else [i + len(images) for i in bidx]  # the noise is seeded by the index
        for out, imgs, ids in ((feats, batch, bidx), (views, [flip_view(im) for im in batch], vidx)):
            for k, v in extractor.run(imgs, ids).items():
                out[k].append(v.numpy())
    evs = []
    for layer in layers:
        a, b = np.concatenate(feats[layer]), np.concatenate(views[layer])
        grid = a.shape[2:]
        evs.append(evaluate_mitigations(a, {"flip": b}, MITIGATIONS, {"flip": flip_correspondence(*grid)},
                                        n_train=n_train, layer=layer, n_boot=n_boot))
    return evs


def planted_blocks(n: int = 120, c: int = 64, grid: int = 16, seed: int = 0) -> dict[str, tuple]:
    """Features and flipped-view features of three planted layers (module docstring)."""
    rng = np.random.default_rng(seed)
    noise = lambda shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    content = noise((n, c, grid, grid))
    rc, cc = positional_code(grid, grid, c, seed=1000 + seed)
    code = (rc.T[:, :, None] + cc.T[:, None, :]).astype(np.float32)
    position = (content + code, content[..., ::-1] + 2.0 * noise(content.shape) + code)
    anomalous = anomaly_features(n, c, grid, ratio=5.0, seed=seed).features
    anomalies = (anomalous, anomalous[..., ::-1] + 0.5 * noise(anomalous.shape))
    massive = content.copy()
    massive[:, 7] = 100.0 + massive[:, 7]
    channels = (massive, massive[..., ::-1] + 2.0 * noise(massive.shape))
    return {"planted_position": position, "planted_anomalies": anomalies, "planted_channels": channels}


def planted_evaluations(n_boot: int) -> list:
    evs = []
    for layer, (a, b) in planted_blocks().items():
        evs.append(evaluate_mitigations(a, {"flip": b}, MITIGATIONS, {"flip": flip_correspondence(*a.shape[2:])},
                                        n_train=len(a) // 2, layer=layer, n_boot=n_boot))
    return evs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-tiny", action="store_true")
    parser.add_argument("--verdicts", action="store_true", help="print every mitigation's verdict too")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--shared-noise", action="store_true", help="tiny: extract each view with its image's noise")
    args = parser.parse_args()
    runs = [("planted-signal model", planted_evaluations)]
    if not args.skip_tiny:
        noise = "the image's own noise" if args.shared_noise else "independent noise"
        runs.insert(0, (f"tiny (random weights), demo photos + corner crops, flip view with {noise}",
                        lambda n_boot: tiny_evaluations(n_boot, shared_noise=args.shared_noise)))
    for title, run in runs:
        start = time.perf_counter()
        evs = run(args.n_boot)
        print(f"== {title}: {evs[0].n_fit_images} fit / {evs[0].n_test_images} test images, "
              f"{time.perf_counter() - start:.0f} s ==")
        print(mitigation_text_table(evs))
        if args.verdicts:
            for ev in evs:
                for e in ev.effects:
                    print(f"  {ev.layer}: {e.verdict}")
            print()


if __name__ == "__main__":
    main()
