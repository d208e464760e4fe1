"""Header cards that astropy would re-format on writing (non-standard values, such as the unquoted string of
DSS's ``SKEW``) go to the output byte for byte.

:func:`raw_header` reads the header of one HDU as stored; :func:`nonstandard_cards` maps the image astropy
would write for each such card to the stored one; :func:`restore_cards` puts the stored images back.
"""

from __future__ import annotations

import gzip
import io
import warnings
from pathlib import Path
from typing import Any

CARD = 80
_GZIP_MAGIC = b"\x1f\x8b"


def raw_header(path: Path, hdul: Any, index: int) -> bytes:
    """The header of HDU ``index`` of the open ``hdul`` as stored in ``path`` (gzipped or not)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fileinfo verifies the header: its "Fixed card" is not what happens
        info = hdul.fileinfo(index)
    start, stop = int(info["hdrLoc"]), int(info["datLoc"])
    with open(path, "rb") as fh:
        gz = fh.read(2) == _GZIP_MAGIC
    with (gzip.open(path, "rb") if gz else open(path, "rb")) as fh:
        fh.seek(start)
        return fh.read(stop - start)


def nonstandard_cards(header_bytes: bytes) -> dict[bytes, bytes]:
    """{image astropy writes: image as stored} for each card of ``header_bytes`` astropy re-formats."""
    from astropy.io import fits

    found: dict[bytes, bytes] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(0, len(header_bytes) - CARD + 1, CARD):
            stored = header_bytes[i : i + CARD]
            if stored.rstrip() == b"END":
                break
            try:
                written = fits.Card.fromstring(stored.decode("ascii")).image.encode("ascii")
            except (ValueError, UnicodeError):
                continue
            if written != stored:
                found[written] = stored
    return found


def card_names(images: dict[bytes, bytes]) -> list[str]:
    """The keywords of the cards of :func:`nonstandard_cards`, sorted."""
    return sorted({stored[:8].decode("ascii", "replace").strip() for stored in images.values()})


def restore_cards(fits_bytes: bytes, images: dict[bytes, bytes]) -> bytes:
    """``fits_bytes`` with every header card listed in ``images`` put back as stored."""
    if not images:
        return fits_bytes
    from astropy.io import fits

    out = bytearray(fits_bytes)
    with fits.open(io.BytesIO(fits_bytes)) as hdul:
        spans = [(int(hdul.fileinfo(i)["hdrLoc"]), int(hdul.fileinfo(i)["datLoc"])) for i in range(len(hdul))]
    for start, stop in spans:
        for i in range(start, stop, CARD):
            stored = images.get(bytes(out[i : i + CARD]))
            if stored is not None:
                out[i : i + CARD] = stored
    return bytes(out)
