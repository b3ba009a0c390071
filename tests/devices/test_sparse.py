"""Top-P% selective communication: exact counts, round trips, determinism, and wire validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from devices.exceptions import SparseEncodingError
from devices.wire.sparse import top_p_decode, top_p_decode_all, top_p_encode, top_p_encode_all
from tests.support.fuzzing import examples


def test_keeps_the_largest_entries_in_index_order() -> None:
    delta = np.array([[0.1, -5.0, 0.3], [2.0, -0.2, 0.0]], dtype=np.float32)
    idx, val = top_p_encode(delta, 0.5)
    assert idx.dtype == np.uint32 and val.dtype == np.float32
    np.testing.assert_array_equal(idx, [1, 2, 3])  # |-5|, |2|, |0.3|
    np.testing.assert_array_equal(val, np.array([-5.0, 0.3, 2.0], np.float32))
    dense = top_p_decode(idx, val, delta.shape)
    np.testing.assert_array_equal(dense, np.array([[0, -5.0, 0.3], [2.0, 0, 0]], np.float32))


@pytest.mark.parametrize(("size", "p", "k"), [(10, 0.1, 1), (10, 0.3, 3), (10, 0.25, 3), (7, 1.0, 7),
                                              (1000, 0.01, 10), (3, 1e-9, 1), (1153, 0.2, 231)])
def test_exact_count(size: int, p: float, k: int) -> None:
    idx, val = top_p_encode(np.random.default_rng(0).normal(size=size), p)
    assert len(idx) == len(val) == k


def test_p_one_is_lossless() -> None:
    delta = np.random.default_rng(1).normal(size=(4, 5)).astype(np.float32)
    idx, val = top_p_encode(delta, 1.0)
    np.testing.assert_array_equal(top_p_decode(idx, val, (4, 5)), delta)


def test_ties_are_deterministic() -> None:
    idx, _ = top_p_encode(np.ones(10), 0.3)
    np.testing.assert_array_equal(idx, [0, 1, 2])


@settings(max_examples=examples(60))
@given(delta=arrays(np.float32, st.integers(1, 200), elements=st.floats(-1e6, 1e6, width=32)),
       p=st.floats(0.001, 1.0))
def test_round_trip_keeps_the_top_entries(delta: np.ndarray, p: float) -> None:
    idx, val = top_p_encode(delta, p)
    assert len(idx) == min(delta.size, max(1, math.ceil(round(p * delta.size, 6))))
    assert np.all(np.diff(idx.astype(np.int64)) > 0)
    dense = top_p_decode(idx, val, delta.shape)
    np.testing.assert_array_equal(dense.reshape(-1)[idx], delta.reshape(-1)[idx])
    dropped = np.setdiff1d(np.arange(delta.size), idx)
    if dropped.size:
        assert np.all(dense.reshape(-1)[dropped] == 0)
        assert np.abs(delta.reshape(-1)[dropped]).max() <= np.abs(val).min()


def test_many_arrays() -> None:
    ws = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([-1.0, 0.5], np.float32)]
    enc = top_p_encode_all(ws, 0.5)
    dec = top_p_decode_all(enc, [w.shape for w in ws])
    np.testing.assert_array_equal(dec[0], [[0, 0, 0], [3, 4, 5]])
    np.testing.assert_array_equal(dec[1], [-1.0, 0])
    with pytest.raises(SparseEncodingError, match="sparse update has 2 arrays; expected 1"):
        top_p_decode_all(enc, [(2, 3)])


@pytest.mark.parametrize("p", [0, -0.1, 1.5, float("nan"), "0.5", True])
def test_bad_fraction(p: object) -> None:
    with pytest.raises(SparseEncodingError, match=r"top-p fraction must be a number in \(0, 1\]"):
        top_p_encode(np.ones(3), p)  # type: ignore[arg-type]


def test_bad_delta() -> None:
    with pytest.raises(SparseEncodingError, match="contains NaN or inf"):
        top_p_encode(np.array([1.0, np.inf]), 0.5)
    with pytest.raises(SparseEncodingError, match="delta is empty"):
        top_p_encode(np.zeros(0), 0.5)
    with pytest.raises(SparseEncodingError, match="must be numeric"):
        top_p_encode(np.array(["a", "b"]), 0.5)


@pytest.mark.parametrize(("indices", "values", "shape", "message"), [
    (np.array([0, 6], np.uint32), np.ones(2), (2, 3), r"sparse index 6 is outside an array of shape \(2, 3\)"),
    (np.array([-1, 2]), np.ones(2), (2, 3), r"sparse index -1 is outside"),
    (np.array([1, 1], np.uint32), np.ones(2), 6, r"sparse index 1 appears more than once"),
    (np.array([1, 2], np.uint32), np.ones(3), 6, r"sparse update has 2 indices but 3 values"),
    (np.array([[1]], np.uint32), np.ones(1), 6, r"sparse indices must be a 1-D integer array"),
    (np.array([0.5]), np.ones(1), 6, r"sparse indices must be a 1-D integer array"),
    (np.array([1], np.uint32), np.array([np.nan]), 6, r"sparse values contain NaN or inf"),
    (np.arange(4, dtype=np.uint32), np.ones(4), 3, r"sparse update has 4 entries for an array of 3"),
])
def test_decode_rejects_malformed_updates(indices: np.ndarray, values: np.ndarray, shape: object,
                                          message: str) -> None:
    with pytest.raises(SparseEncodingError, match=message):
        top_p_decode(indices, values, shape)  # type: ignore[arg-type]


def test_empty_update_decodes_to_zeros() -> None:
    dense = top_p_decode(np.zeros(0, np.uint32), np.zeros(0, np.float32), (2, 2))
    np.testing.assert_array_equal(dense, np.zeros((2, 2)))
