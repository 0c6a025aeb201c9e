"""Feeding extracted batches to the audit state, inline or overlapped with the next batch's forward pass."""

from __future__ import annotations


class Feeder:
    """Feeds extracted batches to the audit state: inline, or (``overlap``) from a background thread one batch
    behind the extraction, so that the analyses' host-side work and small device-to-host transfers overlap
    the next batch's forward pass. On CUDA the thread works on its own stream, after an event that marks
    the batch's outputs as complete; ``record_stream`` keeps their memory until it is done. At most two
    batches wait (bounded memory). :meth:`drain` waits until the state holds every batch submitted
    (before a checkpoint or a merge) and re-raises an error of the thread.
    """

    def __init__(self, overlap: bool, device=None):
        self.overlap, self.error = overlap, None
        if not overlap:
            return
        import queue
        import threading

        import torch

        self.cuda = device is not None and torch.device(device).type == "cuda"
        self.stream = torch.cuda.Stream(device=device) if self.cuda else None
        self.queue: queue.Queue = queue.Queue(maxsize=1)
        self.thread = threading.Thread(target=self._work, name="sdaudit-analyses", daemon=True)
        self.thread.start()

    def submit(self, fn, reps: dict, indices: list[int]) -> None:
        if not self.overlap:
            fn(reps, indices)
            return
        self._raise()
        event = None
        if self.cuda:
            import torch

            event = torch.cuda.Event()
            event.record()
        self.queue.put((fn, reps, indices, event))

    def _work(self) -> None:
        while True:
            item = self.queue.get()
            try:
                if item is None:
                    return
                if self.error is None:
                    self._apply(*item)
            except BaseException as error:  # noqa: BLE001 - handed to the main thread
                self.error = error
            finally:
                del item
                self.queue.task_done()

    def _apply(self, fn, reps: dict, indices: list[int], event) -> None:
        import torch

        with torch.no_grad():
            if not self.cuda:
                fn(reps, indices)
                return
            with torch.cuda.stream(self.stream):
                self.stream.wait_event(event)
                for tensor in reps.values():
                    if tensor.device.type == "cuda":
                        tensor.record_stream(self.stream)
                fn(reps, indices)

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def drain(self) -> None:
        if self.overlap:
            self.queue.join()
            self._raise()

    def close(self) -> None:
        if self.overlap and self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
