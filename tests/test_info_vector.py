"""Reading a sample's .npy info vector (xkd.data.sample_check.load_npy): each distinct header is
parsed once; whatever is not a known header with its whole payload is numpy's to load or refuse."""
from __future__ import annotations

import io

import numpy as np
import pytest

from xkd.data import sample_check
from xkd.data.sample_check import load_npy


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_a_known_header_is_read_without_numpys_parse_and_gives_the_same_array(monkeypatch):
    monkeypatch.setattr(sample_check, "_npy_headers", {})
    first, second = npy(np.array([80, 64000, 3, 1, 171, 128])), npy(np.array([19, 0, 0, 0, 228, 128]))
    assert load_npy(first).tolist() == [80, 64000, 3, 1, 171, 128]
    assert len(sample_check._npy_headers) == 1  # (int64, (6,)): the two vectors share it

    def no_parse(*args, **kwargs):
        raise AssertionError("np.load called for a known header")
    monkeypatch.setattr(np, "load", no_parse)
    again = load_npy(second)
    assert again.tolist() == [19, 0, 0, 0, 228, 128] and again.dtype == np.int64 and again.flags.writeable


def test_a_cut_payload_or_another_header_goes_to_numpy(monkeypatch):
    monkeypatch.setattr(sample_check, "_npy_headers", {})
    data = npy(np.arange(6))
    load_npy(data)
    with pytest.raises(ValueError):  # numpy's own error for the missing bytes
        load_npy(data[:-8])
    assert load_npy(npy(np.arange(3, dtype=np.int32))).tolist() == [0, 1, 2]
    assert load_npy(npy(np.arange(6.0))).dtype == np.float64  # read_info refuses it, not the loader
