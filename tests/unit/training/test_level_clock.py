"""CMS firing schedule (hope_math.md §4.3): (i − W + 1) mod P == 0 with i ≥ W, frozen before W."""

import pytest

from hope_megatron.training.cms_optimizer import LevelClock


def test_firing_iterations():
    c = LevelClock(period=4, warmup=2)
    assert [i for i in range(20) if c.fires(i)] == [5, 9, 13, 17]
    assert [i for i in range(4) if c.frozen(i)] == [0, 1]
    assert [c.firings_before(i) for i in (0, 5, 6, 10, 18)] == [0, 0, 1, 2, 4]
    assert [i for i in range(5) if LevelClock(1).fires(i)] == [0, 1, 2, 3, 4]
    assert [i for i in range(8) if LevelClock(2).fires(i)] == [1, 3, 5, 7]


def test_every_firing_closes_exactly_p_accumulations():
    for p, w in [(1, 0), (3, 0), (4, 2), (32, 7)]:
        c, n, sizes = LevelClock(p, w), 0, []
        for i in range(200):
            if not c.frozen(i):
                n += 1
            if c.fires(i):
                sizes.append(n)
                n = 0
        assert sizes and all(s == p for s in sizes)


def test_bad_clock():
    with pytest.raises(ValueError, match="period >= 1"):
        LevelClock(0)
