"""A thread-safe LRU cache bounded by the total size of its values (:class:`ByteLRU`).

The explorer keeps decoded features, thumbnails and detections in memory between requests; a bound in
bytes rather than in entries keeps a 64x64x320 layer and an 8x8 one from counting the same.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Hashable


class ByteLRU:
    """Least-recently-used cache holding at most ``max_bytes`` of values (sizes given by the caller)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict = OrderedDict()
        self._sizes: dict = {}
        self._total = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        """The cached value (now the most recent one), or None."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def put(self, key: Hashable, value: Any, size: int) -> None:
        """Cache ``value`` (``size`` bytes), evicting the least recently used values beyond the bound; a value
        larger than the whole bound is not kept."""
        with self._lock:
            if key in self._items:
                self._total -= self._sizes.pop(key)
                del self._items[key]
            if size > self.max_bytes:
                return
            self._items[key] = value
            self._sizes[key] = size
            self._total += size
            while self._total > self.max_bytes:
                old, _ = self._items.popitem(last=False)
                self._total -= self._sizes.pop(old)

