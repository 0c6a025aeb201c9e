"""The report's mitigation section renders an evaluation: rows per block, intervals, the verdict, the control."""

from __future__ import annotations

import numpy as np

from sdaudit.analyses.views import flip_correspondence
from sdaudit.mitigations.effects import MitigationEvaluation
from sdaudit.mitigations.evaluate import evaluate_mitigations
from sdaudit.report.html import fmt_pct
from sdaudit.report.html import render_mitigations
from sdaudit.report.mitigations import mitigation_groups, mitigation_text_table


def _evaluation(layer, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((20, 16, 6, 6)).astype(np.float32) + np.linspace(-2, 2, 6, dtype=np.float32)
    b = a[..., ::-1] + rng.standard_normal(a.shape).astype(np.float32)
    a[::2, :, 1:3, 2:4] *= 12  # anomalies
    return evaluate_mitigations(a, {"flip": b}, ["position", "anomalies", "border"],
                                {"flip": flip_correspondence(6, 6)}, n_train=10, layer=layer, n_boot=200)


def test_the_section_renders_every_mitigation_per_block_with_intervals_and_verdicts():
    evs = [_evaluation("up_blocks[1].upsamplers[0]", 0), _evaluation("up_blocks[1].resnets[2]", 1),
           _evaluation("mid_block", 2)]
    evs = [MitigationEvaluation.from_dict(e.to_dict()) for e in evs]  # as read back from results
    groups = mitigation_groups(evs)
    assert [g["block"] for g in groups] == ["up_blocks[1]", "mid_block"]
    assert [r["mitigation"] for r in groups[0]["rows"]] == ["position", "anomalies", "border", "anomalies-mean"] * 2
    html = render_mitigations(evs)
    assert html.count("<tr class=\"verdict\">") == 12 and "(control of anomalies)" in html
    e = evs[0].effect("position")
    acc = e.accuracy["flip"]["all"]
    assert f"{fmt_pct(acc.before.estimate)} [{fmt_pct(acc.before.low)}, {fmt_pct(acc.before.high)}]" in html
    assert e.verdict in html.replace("&gt;", ">")
    assert "position probe accuracy (s = 8)" in html
    assert f"chance {fmt_pct(e.artifact.reference)}" in html  # 1/6 per axis on a 6x6 grid
    text = mitigation_text_table(evs)
    assert "[up_blocks[1]]" in text and "[mid_block]" in text and text.count("anomalies-mean") == 3
    assert render_mitigations([]).strip() == ""
