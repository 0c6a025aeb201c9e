"""Progress bars of an audit's passes (rich: images done, images/s, elapsed, remaining), and the prefix
that says which run a pass belongs to."""

from __future__ import annotations


class progress_bars:
    """A context manager around a rich :class:`~rich.progress.Progress` for the passes (``progress`` is
    None when disabled)."""

    def __init__(self, enabled: bool):
        self.enabled, self.progress = enabled, None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            from ..terminal import RateColumn, RemainingColumn

            # elapsed and images/s per pass: each pass's bar stays on screen as its stage line
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     RateColumn(), TimeElapsedColumn(), RemainingColumn())
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()
        return False


class labelled:
    """A rich progress whose new tasks carry a prefix (which run of the audit a pass belongs to)."""

    def __new__(cls, progress, prefix: str):
        if progress is None:
            return None
        return super().__new__(cls)

    def __init__(self, progress, prefix: str):
        self.progress, self.prefix = progress, prefix

    def add_task(self, description: str, **kwargs):
        return self.progress.add_task(self.prefix + description, **kwargs)

    def __getattr__(self, name):
        return getattr(self.progress, name)
