"""The terminal's words for what qualifies a number."""

from sdaudit.audit.caveats import caveats, ratio_text, with_interval
from sdaudit.audit_results import AuditResults, LayerRow


def test_ratio_text_names_undefined_and_unreadable_ratios():
    results = AuditResults.from_dict({"table": [], "borders": {"a": {"full": {"corner": 0.4}},
                                                               "b": {"full": {"corner": 0.001}}}})
    assert ratio_text(results, LayerRow.from_dict({"layer": "a", "corner_rel_sim": 1.25, "corner_rel_sim_low": 1.1,
                                                   "corner_rel_sim_high": 1.4})) == "1.250 [1.100, 1.400]"
    # over a near-zero reference
    assert ratio_text(results, LayerRow.from_dict({"layer": "b", "corner_rel_sim": 450.0})) == "n.m."
    assert ratio_text(results, LayerRow("c", borders_undefined="not defined (grid too small)")) == "n.d."
    assert ratio_text(results, LayerRow("a")) == "-"
    assert with_interval(0.5, None, None) == "0.500" and with_interval(None, 1, 2) == "-"


def test_ratio_text_reads_ratios_by_the_reports_rule():
    """Regression (review): the terminal had its own threshold and called a ratio without a recorded reference
    'n.m.' where the report reads it; both now use report.verdicts.meaningful_ratio."""
    from sdaudit.report.verdicts import meaningful_ratio

    results = AuditResults.from_dict({"table": []})  # no reference similarities recorded
    row = LayerRow.from_dict({"layer": "x", "corner_rel_sim": 1.5})
    assert meaningful_ratio(1.5, None) and ratio_text(results, row) == "1.500"


def test_caveats_list_random_weights_controls_and_warnings():
    lines = caveats(AuditResults.from_dict({"table": [], "model": {"random_weights": True},
                                            "controls": [{"label": "circular padding"}],
                                            "warnings": ["only 9 images"]}))
    assert lines[0].startswith("random weights") and "circular padding" in lines[1] and lines[2] == "warning: only 9 images"
    assert caveats(AuditResults.from_dict({"table": [], "model": {"random_weights": False}})) == []


def test_progress_of_other_runs_is_labelled():
    """The passes of other timesteps, seeds and controls are told apart in the terminal."""
    from sdaudit.audit.progress import labelled

    class Progress:
        def __init__(self):
            self.tasks = []

        def add_task(self, description, **kwargs):
            self.tasks.append(description)
            return len(self.tasks)

        def update(self, task, **kwargs):
            return task

    progress = Progress()
    wrapped = labelled(progress, "control untrained: ")
    assert wrapped.add_task("pass full (45 layers)", total=3) == 1 and wrapped.update(1, completed=2) == 1
    assert progress.tasks == ["control untrained: pass full (45 layers)"] and labelled(None, "x") is None
