"""The .npy outputs: the bytes np.save writes, header and data written apart (hashed as written)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from hpc_sr.apps.inference import publish
from hpc_sr.apps.inference.format_numpy import _save, npy_header
from hpc_sr.apps.inference.ledger import file_sha256


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.arange(60, dtype=np.float64).reshape(3, 4, 5),
        np.arange(6, dtype=">f4").reshape(2, 3),
        np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),  # np.save itself
        np.zeros((0, 4), np.float32),
    ],
)
def test_npy_outputs_are_the_bytes_of_np_save(tmp_path: Path, array: np.ndarray) -> None:
    expected = io.BytesIO()
    np.save(expected, array)
    with publish.checksums() as sums:
        path = _save(tmp_path / "x.npy", array)
    assert path.read_bytes() == expected.getvalue()
    assert sums[path] == file_sha256(path)
    assert (npy_header(array) is None) == (not array.flags.c_contiguous)
