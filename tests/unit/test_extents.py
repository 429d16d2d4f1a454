"""Extents against a model: the plain set of byte offsets it stands for."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alluxiofuse.writes.extents import Extents

DOMAIN = 64
ranges = st.tuples(st.integers(0, DOMAIN), st.integers(0, DOMAIN)).map(sorted).map(tuple)
ops = st.lists(st.one_of(st.tuples(st.just("add"), ranges),
                         st.tuples(st.just("truncate"), st.integers(0, DOMAIN))), max_size=30)


def _apply(ops_: list[tuple[str, object]]) -> tuple[Extents, set[int]]:
    extents, model = Extents(), set()
    for op, arg in ops_:
        if op == "add":
            start, end = arg  # type: ignore[misc]
            extents.add(start, end)
            model |= set(range(start, end))
        else:
            extents.truncate(arg)  # type: ignore[arg-type]
            model = {b for b in model if b < arg}  # type: ignore[operator]
    return extents, model


@given(ops)
def test_holds_exactly_the_model_in_canonical_form(ops_: list[tuple[str, object]]) -> None:
    extents, model = _apply(ops_)
    held = [b for start, end in extents for b in range(start, end)]
    assert held == sorted(model)
    assert extents.total == len(model)
    pairs = list(extents)
    assert all(s < e for s, e in pairs)
    assert all(e1 < s2 for (_, e1), (s2, _) in itertools.pairwise(pairs))  # no touching
    assert Extents(pairs) == extents


@given(ops, ranges)
def test_missing_is_the_complement_within_a_range(ops_: list[tuple[str, object]],
                                                  window: tuple[int, int]) -> None:
    extents, model = _apply(ops_)
    start, end = window
    gaps = extents.missing(start, end)
    assert [b for s, e in gaps for b in range(s, e)] == [
        b for b in range(start, end) if b not in model]
    assert all(s < e for s, e in gaps)
    assert all(e1 < s2 for (_, e1), (s2, _) in itertools.pairwise(gaps))
    assert extents.covers(start, end) is (not gaps)


def test_examples() -> None:
    e = Extents([(10, 20), (30, 40)])
    e.add(20, 30)  # touching on both sides: one range
    assert list(e) == [(10, 40)]
    assert e.missing(0, 50) == [(0, 10), (40, 50)]
    e.truncate(25)
    assert list(e) == [(10, 25)]
    e.truncate(10)
    assert list(e) == []


@pytest.mark.parametrize("start,end", [(-1, 3), (5, 4)])
def test_bad_ranges_are_refused(start: int, end: int) -> None:
    with pytest.raises(ValueError, match="not a byte range"):
        Extents().add(start, end)
    with pytest.raises(ValueError, match="not a byte range"):
        Extents().missing(start, end)
