"""End to end on the tiny model: photos and their flips through the extractor, the evaluator on the paper's anomaly
layer with every mitigation, and the report section from its result."""

from __future__ import annotations

import math

import numpy as np

from sdaudit.analyses.views import flip_correspondence, flip_view
from sdaudit.constants import PAPER_ANOMALY_LAYER
from sdaudit.mitigations import REGISTRY
from sdaudit.mitigations.evaluate import CONTROL, MitigationEvaluator
from sdaudit.report.html import render_mitigations


def test_tiny_photos_and_flips_through_the_evaluator(tiny):
    from conftest import random_photo

    from sdaudit.extraction.extractor import Extractor
    from sdaudit.settings import ExtractionSettings

    n, n_train = 16, 6
    extractor = Extractor(tiny, [PAPER_ANOMALY_LAYER], ExtractionSettings(size=128))  # an 8x8 grid
    size = extractor.settings.input_size
    photos = [random_photo(i, size=(size, size)) for i in range(n)]
    grid = extractor.shapes[PAPER_ANOMALY_LAYER][1:]
    ev = MitigationEvaluator(list(REGISTRY), {"flip": flip_correspondence(*grid)}, n_images=n, n_train=n_train,
                             layer=PAPER_ANOMALY_LAYER, n_boot=200)
    for lo in range(0, n, 4):
        idx = list(range(lo, lo + 4))
        a = extractor.run(photos[lo:lo + 4], idx)[PAPER_ANOMALY_LAYER]
        # the views get their own noise (index + n): the image's noise at the same absolute positions would
        # match every token to its own position by itself
        b = extractor.run([flip_view(p) for p in photos[lo:lo + 4]], [i + n for i in idx])[PAPER_ANOMALY_LAYER]
        ev.update(a, {"flip": b}, idx)  # torch tensors, routed to fit / measure by index
    result = ev.result()
    assert result.n_fit_images == n_train and result.n_test_images == n - n_train
    assert [e.name for e in result.effects] == [*REGISTRY, CONTROL]
    for e in result.effects:
        acc = e.accuracy["flip"]["all"]
        assert 0 <= acc.before.estimate <= 1 and math.isfinite(acc.difference.low)
        assert e.verdict.startswith(f"{e.name}: ")
    probe = result.effect("position").artifact
    assert probe.change.before.estimate > probe.reference  # tiny's zero padding: position is readable
    html = render_mitigations([result])
    assert PAPER_ANOMALY_LAYER in html and html.count('class="verdict"') == len(result.effects)
    assert np.isfinite(result.effect("channels").artifact.change.before.estimate)
