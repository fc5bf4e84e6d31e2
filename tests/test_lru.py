"""The LRU map the localizer's caches share."""

from __future__ import annotations

from geoloc.lru import Lru


def test_lru_keeps_the_most_recent_after_trim() -> None:
    c: Lru[int, str] = Lru(2)
    for k in (1, 2, 3):
        c.put(k, str(k))
    assert len(c) == 3  # a batch is not evicted while it is inserted
    assert c.get(1) == "1"  # 1 is now the most recent
    c.touch([2, 99])  # then 2; an absent key is ignored
    c.trim()
    assert 3 not in c and c[1] == "1" and c.get(2) == "2" and len(c) == 2
    assert c.get(3) is None
    c.clear()
    assert len(c) == 0
