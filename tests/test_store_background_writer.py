"""The background store writer: order kept, errors re-raised in the caller, a failed write leaves the store consistent."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from sdaudit.store import Float16OverflowError, ImageEntry, StoreError, create_store, open_store
from sdaudit.store.writer import BackgroundWriter

SHAPES = {"conv_in": (4, 4, 4)}
CONFIG = {"model": {"name": "fake"}, "protocol": "clean", "timestep": 50, "seed": 42, "size": 16,
          "prompt": "", "layers": list(SHAPES), "dtype": "float16"}


def batch(start: int, b: int = 2):
    rng = np.random.default_rng(start)
    arrays = {name: rng.standard_normal((b, *shape)).astype(np.float32) for name, shape in SHAPES.items()}
    entries = [ImageEntry(i, f"/data/img{i}.png", f"{i:064x}", 16, 16, "RGB") for i in range(start, start + b)]
    return arrays, entries, rng.integers(0, 256, (b, 16, 16, 3), dtype=np.uint8)


class SlowStore:
    """Records the order of writes; each write takes a while, so that the queue fills up."""

    def __init__(self, fail_at: int | None = None):
        self.starts, self.fail_at, self.thread = [], fail_at, None

    def write_batch(self, start, arrays, entries, inputs=None):
        self.thread = threading.current_thread()
        time.sleep(0.02)
        if start == self.fail_at:
            raise OSError(f"disk full at {start}")
        self.starts.append(start)


def test_batches_are_written_in_order_on_another_thread():
    store = SlowStore()
    with BackgroundWriter(store, depth=2) as writer:
        for start in range(0, 20, 2):
            writer.submit(start, {}, [])
    assert store.starts == list(range(0, 20, 2))
    assert store.thread is not threading.current_thread()


def test_a_failed_write_is_raised_in_the_caller_and_stops_later_writes():
    store = SlowStore(fail_at=4)
    writer = BackgroundWriter(store, depth=1)
    with pytest.raises(OSError, match="disk full at 4"):
        for start in range(0, 20, 2):
            writer.submit(start, {}, [])
        writer.close()
    writer.close()  # reported once; closing again is quiet
    assert store.starts == [0, 2]  # nothing after the failed batch was written


def test_close_raises_an_error_of_the_last_batch():
    writer = BackgroundWriter(SlowStore(fail_at=2))
    writer.submit(0, {}, [])
    writer.submit(2, {}, [])
    with pytest.raises(OSError, match="disk full at 2"):
        writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(4, {}, [])


def test_an_exception_in_the_caller_still_writes_the_queued_batches():
    """Batches extracted before the caller failed (a bad image, Ctrl-C) are complete: they are committed, as
    direct writes would have committed them (regression: a bad image mid-run lost the batch before it)."""
    store = SlowStore()
    with pytest.raises(KeyboardInterrupt):
        with BackgroundWriter(store, depth=2) as writer:
            for start in range(0, 6, 2):
                writer.submit(start, {}, [])
            raise KeyboardInterrupt
    assert store.starts == [0, 2, 4]


def test_a_write_error_while_the_caller_fails_is_noted_on_the_callers_exception():
    store = SlowStore(fail_at=2)
    with pytest.raises(KeyError) as caught:
        with BackgroundWriter(store, depth=2) as writer:
            writer.submit(0, {}, [])
            writer.submit(2, {}, [])
            raise KeyError("bad image")
    assert store.starts == [0]
    assert any("disk full at 2" in note for note in caught.value.__notes__)


def test_a_real_store_is_equal_to_direct_writes_and_consistent_after_a_failure(tmp_path):
    direct = create_store(tmp_path / "direct", CONFIG, SHAPES, capacity=2)
    for start in range(0, 6, 2):
        arrays, entries, inputs = batch(start)
        direct.write_batch(start, arrays, entries, inputs=inputs)
    direct.close()
    store = create_store(tmp_path / "bg", CONFIG, SHAPES, capacity=2)
    with BackgroundWriter(store) as writer:
        for start in range(0, 6, 2):
            arrays, entries, inputs = batch(start)
            writer.submit(start, arrays, entries, inputs=inputs)
    store.close()
    assert np.array_equal(open_store(tmp_path / "bg").read("conv_in"), open_store(tmp_path / "direct").read("conv_in"))

    # a batch that cannot be written (float16 overflow) fails in the caller; the store keeps its committed images
    store = open_store(tmp_path / "bg", mode="r+")
    writer = BackgroundWriter(store)
    arrays, entries, inputs = batch(6)
    arrays["conv_in"][0, 0, 0, 0] = 70000.0
    writer.submit(6, arrays, entries, inputs=inputs)
    with pytest.raises(Float16OverflowError):
        writer.submit(8, *batch(8)[:2], inputs=batch(8)[2])
        writer.close()
    writer.close()
    store.close()
    reopened = open_store(tmp_path / "bg")
    assert reopened.num_images == 6 and not reopened.damaged_rows()
    # and the next run resumes from there
    with open_store(tmp_path / "bg", mode="r+") as store:
        with pytest.raises(StoreError, match="starts at image 8"):
            with BackgroundWriter(store) as writer:
                writer.submit(8, *batch(8)[:2], inputs=batch(8)[2])
        with BackgroundWriter(store) as writer:
            writer.submit(6, *batch(6)[:2], inputs=batch(6)[2])
    assert open_store(tmp_path / "bg").num_images == 8
