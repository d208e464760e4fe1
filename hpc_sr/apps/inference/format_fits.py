"""FITS files (.fits/.fit/.fts, gzipped or not, tile-compressed .fits.fz/.fz): one unit per file.

- Images: every science image HDU (2-D, or an (N, H, W) cube read as a stack of N images; error, quality,
  weight and mask maps such as ERR, DQ, VAR, WHT stay at the input's resolution, copied), or those
  ``opts.hdus``
  names (``"SCI"``: every HDU of that EXTNAME; ``"SCI,2"``: EXTNAME and EXTVER; ``"1"``: an index). A file
  with no image HDU (a table, a header-only primary) is :class:`NotAnImage`; a named HDU missing a DataError.
- Output: ONE file of the input's structure, HDU for HDU: each upscaled image where it was, with its WCS
  rescaled (:mod:`hpc_sr.apps.fits_wcs`), a tile-compressed image compressed the same way, BSCALE / BZERO /
  BLANK / checksums dropped, HPCSR* cards and HISTORY (the run's provenance, the normalisation and flux mode,
  the HDUs left at the input's resolution); every other HDU (tables, images not chosen) copied byte for byte,
  and the distortion lookup tables of an upscaled WCS rescaled.
- Error maps (``results.sigma``): an image extension after each upscaled science image (not after one that is
  itself an error, quality or weight map), with the same rescaled WCS and BUNIT and the keywords of ESO
  pipeline products (DICD: HDUCLASS='ESO', HDUCLAS1='IMAGE', HDUCLAS2='ERROR', HDUCLAS3='RMSE', SCIDATA
  naming the science HDU, which gets HDUCLAS2='DATA' and ERRDATA); EXTNAME 'ERR' with the science EXTVER, as
  JWST names it ('SR_ERR' when the input already has that HDU).
- Speed: headers stay as their stored card images (:class:`Cards`, the part of astropy's Header API that
  fits_wcs uses), data is read and written with numpy, so a 75 x 75 cutout costs ~0.2 ms each way; astropy
  decompresses and compresses tile-compressed images and reads the WCS back. That check (~25 ms) runs once per
  distinct WCS form (keyword set, value kinds, CTYPE/CUNIT and the like: :func:`wcs_form`), as the rescale of
  two headers of one form is the same linear edit; a WCS with lookup tables is checked every time.
"""

from __future__ import annotations

import functools
import gzip
import io
import math
import mmap
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from hpc_sr.apps import fits_cards, fits_io, fits_wcs
from hpc_sr.apps.fits_cards import CARD
from hpc_sr.apps.inference import publish
from hpc_sr.apps.inference.formats import (
    FORMATS,
    ImageSet,
    InferenceOptions,
    NotAnImage,
    Results,
    Unit,
    output_name,
)
from hpc_sr.errors import DataError

BLOCK = 2880
ERR_KEYWORDS = {  # ESO DICD keywords of an error extension (besides SCIDATA), as its pipelines write them
    "HDUCLASS": ("ESO", "class name (ESO format)"),
    "HDUDOC": ("DICD", "document with class description"),
    "HDUVERS": ("DICD version 6", "version number"),
    "HDUCLAS1": ("IMAGE", "image data"),
}
ANCILLARY = re.compile(r"^(ERR|SR_ERR|ERROR|RMS|SIGMA|DQ|QUALITY|MASK|VAR.*|IVAR|STAT|WHT|WEIGHT|CON|CTX)$")
_NOT_IN_ERR = re.compile(  # cards of a science header its error extension does not inherit
    r"^(SIMPLE|XTENSION|BITPIX|NAXIS\d*|EXTEND|PCOUNT|GCOUNT|GROUPS|EXTNAME|EXTVER|EXTLEVEL|NEXTEND|INHERIT"
    r"|HDUCLASS|HDUCLAS\d|HDUDOC|HDUVERS|SCIDATA|ERRDATA|QUALDATA|CHECKSUM|DATASUM|HISTORY|COMMENT|)$"
)
_DTYPES = {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}
_STRING = re.compile(r"'((?:[^']|'')*)'")
_INT = re.compile(r"^[+-]?\d+$")
_FORM_VALUES = re.compile(  # cards whose value (not only its kind) decides the form of a WCS
    r"^(NAXIS|WCSAXES[A-Z]?|CTYPE\d+[A-Z]?|CUNIT\d+[A-Z]?|RADESYS[A-Z]?|RADECSYS|SPECSYS[A-Z]?|PS\d+_\d+[A-Z]?"
    r"|CPDIS\d+[A-Z]?|CQDIS\d+[A-Z]?|D2IMDIS\d+[A-Z]?|(A|B|AP|BP)_ORDER)$"
)
_FORM_PREFIXES = (
    *("NAXIS", "WCSAXES", "CTYPE", "CUNIT", "RADESYS", "RADECSYS", "SPECSYS", "PS", "CPDIS", "CQDIS", "D2IM"),
    *("DP", "DQ", "A_ORDER", "B_ORDER", "AP_ORDER", "BP_ORDER"),
)
_TABLE_CARD = re.compile(r"^(DP|DQ|D2IM|PS)\d")  # distortion records, -TAB: a WCS that reads tables
_COMMENTARY = ("", "COMMENT", "HISTORY")
_COMMENTARY_HEADS = ("        ", "COMMENT ", "HISTORY ", "CONTINUE")
MEMO = 4096  # rescaled headers remembered (per process)
MMAP_FROM = 1 << 20  # plan reads the headers of larger files through a memory map
_VERIFIED: dict[tuple[Any, ...], bool] = {}  # WCS forms whose rescale astropy has read back
_TOUCHED: dict[tuple[Any, ...], list[str]] = {}  # WCS form -> the keys its rescale sets
_RESCALED: dict[tuple[Any, ...], tuple[Any, ...]] = {}  # (form, *cards its rescale sets) -> the output cards


C = TypeVar("C", bound="Cards")


def _fits() -> Any:
    from astropy.io import fits

    return fits


# ----------------------------------------------------------------------------------------------- cards
def card_value(image: str) -> Any:
    """The value of a card image (80 characters, or more with its CONTINUE cards); None when it has none.

    Integers, reals (also with a D exponent), logicals and one-card strings are parsed here; anything else
    (complex numbers, long strings) by astropy."""
    if image[8:10] != "= ":
        return None
    text = image[10:CARD].lstrip()
    if text.startswith("'"):
        m = _STRING.match(text)
        if m and len(image) == CARD:
            return m.group(1).replace("''", "'").rstrip()
    else:
        field = text.split("/", 1)[0].strip()
        if field in ("T", "F"):
            return field == "T"
        if _INT.match(field):
            return int(field)
        try:
            return float(field.upper().replace("D", "E"))
        except ValueError:
            if not field:
                return None
    return _fits().Card.fromstring(image).value


def _comment(image: str) -> str:
    text = image[10:CARD]
    m = _STRING.match(text.lstrip()) if text.lstrip().startswith("'") else None
    rest = text.lstrip()[m.end() :] if m else text
    return rest.split("/", 1)[1].strip() if "/" in rest else ""


def _float_text(value: float) -> str:
    """A real as astropy writes it (``str``, upper-case exponent, at most 20 characters)."""
    text = str(value).replace("e", "E")
    if len(text) > 20:
        i = text.find("E")
        text = text[:20] if i < 0 else text[: 20 - (len(text) - i)] + text[i:]
    return text


def card_images(key: str, value: Any, comment: str = "") -> list[str]:
    """The 80-character image(s) of ``key = value / comment`` as astropy writes them (the common forms here,
    long strings, HIERARCH keys and other values by astropy)."""
    text = None
    if len(key) <= 8:
        if isinstance(value, str) and value.isascii() and len(value) <= 68:
            escaped = value.replace("'", "''")
            quoted = f"'{escaped:8}'"
            text = f"{quoted:20}" if value else "''"
        elif isinstance(value, bool | np.bool_):
            text = f"{'T' if value else 'F':>20}"
        elif isinstance(value, int | np.integer):
            text = f"{int(value):>20d}"
        elif isinstance(value, float | np.floating) and np.isfinite(value):
            text = f"{_float_text(float(value)):>20}"
    if text is not None and len(text) <= 70:
        image = f"{key:8}= {text}" + (f" / {comment}" if comment else "")
        return [f"{image:{CARD}}"[:CARD]]
    image = _fits().Card(key, value, comment).image
    return [image[i : i + CARD] for i in range(0, len(image), CARD)]


def history_images(text: str) -> list[str]:
    """HISTORY cards holding ``text`` (72 characters each, non-ASCII replaced)."""
    text = text.encode("ascii", "replace").decode("ascii")
    return [f"HISTORY {text[i : i + 72]:72}" for i in range(0, max(len(text), 1), 72)]


class Cards:
    """A header as its stored card images (END left out), with the part of astropy's Header API that
    :mod:`hpc_sr.apps.fits_wcs` and :func:`hpc_sr.apps.fits_io.sr_header` use: a card not changed is written
    back byte for byte, and a cutout's header costs microseconds instead of astropy's milliseconds.

    Keys are the first 8 characters of each card (``HIERARCH`` for ESO's long keys, ``DP1`` for the record
    cards ``DP1.EXTVER``, which astropy splits); a value is that of the first card with the key."""

    __slots__ = ("_first", "_values", "images")

    def __init__(self, images: list[str]) -> None:
        self.images = images
        self._first: dict[str, int] | None = None  # key -> its first card (kept on inserts, else rebuilt)
        self._values: dict[str, Any] = {}  # values read (forgotten at an edit)

    @classmethod
    def parse(cls, raw: bytes) -> Cards:
        """Cards of ``raw``, a header's bytes up to its END card (latin-1: each byte written back as read)."""
        text = raw.decode("latin-1")
        return cls([text[i : i + CARD] for i in range(0, len(text) - CARD + 1, CARD)])

    @classmethod
    def from_header(cls, header: Any) -> Cards:
        """Cards of an astropy Header."""
        text = header.tostring(padding=False).encode("latin-1")
        return cls.parse(text[: text.rfind(b"END")] if text.rstrip().endswith(b"END") else text)

    def header(self) -> Any:
        """The astropy Header of these cards."""
        return _fits().Header.fromstring(self.tobytes().decode("latin-1"))

    def tobytes(self) -> bytes:
        """The header as written: the cards, END, blank-padded to a multiple of 2880 bytes."""
        text = "".join(self.images) + f"{'END':{CARD}}"
        return (text + " " * (-len(text) % BLOCK)).encode("latin-1")

    def copy(self) -> Cards:
        return self._copy_to(Cards(list(self.images)))

    def _copy_to(self, other: C) -> C:
        other._first = None if self._first is None else dict(self._first)
        other._values = dict(self._values)
        return other

    def _edited(self) -> None:
        self._first = None
        self._values.clear()

    def _inserted(self, at: int, images: list[str]) -> None:
        """Keep the key index after ``images`` were inserted at ``at`` (headers gain their cards one at a
        time: no rebuild of the whole index for each)."""
        first = self._first
        if first is None:
            return
        n = len(images)
        if at < len(self.images) - n:  # cards after ``at`` moved
            for k, i in first.items():
                if i >= at:
                    first[k] = i + n
        for j, image in enumerate(images):
            k = image[:8].rstrip()
            i = first.get(k)
            if i is None or i > at + j:
                first[k] = at + j
                self._values.pop(k, None)

    def keys(self) -> list[str]:
        return [image[:8].rstrip() for image in self.images if not image.startswith("CONTINUE")]

    def __iter__(self) -> Any:
        return iter(self.keys())

    def _find(self, key: str) -> int:
        if self._first is None:
            self._first = {}
            for i, image in enumerate(self.images):
                self._first.setdefault(image[:8].rstrip(), i)
        return self._first.get(key, -1)

    def _span(self, i: int) -> int:
        """The index after card ``i`` and its CONTINUE cards."""
        j = i + 1
        while j < len(self.images) and self.images[j].startswith("CONTINUE"):
            j += 1
        return j

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._find(key) >= 0

    def __getitem__(self, key: str) -> Any:
        if key in self._values:
            return self._values[key]
        i = self._find(key)
        if i < 0:
            raise KeyError(key)
        value = self._values[key] = card_value("".join(self.images[i : self._span(i)]))
        return value

    def get(self, key: str, default: Any = None) -> Any:
        return default if self._find(key) < 0 else self[key]

    def __setitem__(self, key: str, value: Any) -> None:
        """``cards[key] = value`` or ``(value, comment)``: the first card of ``key`` replaced (its comment
        kept unless one is given), else a new card after the last non-commentary one (as astropy does)."""
        value, comment = value if isinstance(value, tuple) else (value, None)
        i = self._find(key)
        if comment is None:
            comment = _comment(self.images[i]) if i >= 0 else ""
        self.put(key, card_images(key, value, comment))

    def card(self, key: str) -> tuple[str, ...] | None:
        """The image(s) of the first card of ``key`` (with its CONTINUE cards), None when it has none."""
        i = self._find(key)
        return None if i < 0 else tuple(self.images[i : self._span(i)])

    def put(self, key: str, images: list[str]) -> None:
        """The card images of ``key`` replaced by ``images`` (added as ``cards[key] = ...`` adds)."""
        i = self._find(key)
        self._values.pop(key, None)
        if i >= 0:
            end = self._span(i)
            self.images[i:end] = images
            if len(images) != end - i:
                self._edited()
            return
        at = len(self.images)
        while at > 0 and self.images[at - 1][:8].rstrip() in _COMMENTARY:
            at -= 1
        self.images[at:at] = images
        self._inserted(at, images)

    def insert_after(self, after: str, key: str, value: Any, comment: str = "") -> None:
        """A new card right after the last card whose key matches the regular expression ``after``."""
        found = [i + 1 for i, image in enumerate(self.images) if re.match(after, image[:8].rstrip())]
        at = max(found, default=len(self.images))
        images = card_images(key, value, comment)
        self.images[at:at] = images
        self._inserted(at, images)

    def remove(self, key: str, ignore_missing: bool = False, remove_all: bool = False) -> None:
        """Drop the first card of ``key`` (every one with ``remove_all``) and its CONTINUE cards."""
        i = self._find(key)
        if i < 0 and not ignore_missing:
            raise KeyError(key)
        while i >= 0:
            del self.images[i : self._span(i)]
            self._edited()
            i = self._find(key) if remove_all else -1

    def add_history(self, text: str) -> None:
        self.extend(history_images(text))

    def extend(self, images: list[str]) -> None:
        """Card images added at the end."""
        at = len(self.images)
        self.images += images
        self._inserted(at, images)


# ----------------------------------------------------------------------------------------------- HDUs
@dataclass
class Hdu:
    """One HDU of a file as stored: its cards and where its header and data lie in the file's bytes."""

    index: int
    cards: Cards
    start: int  # offset of the header
    data_start: int
    data_size: int  # bytes of data, without the padding
    end: int  # offset after the padded data (or the end of the file)

    @functools.cached_property
    def compressed(self) -> bool:
        c = self.cards
        return self.index > 0 and c.get("XTENSION") == "BINTABLE" and c.get("ZIMAGE") is True

    @functools.cached_property
    def name(self) -> str:
        name = self.cards.get("EXTNAME")
        if isinstance(name, str) and name.strip():
            return name.strip().upper()
        return "PRIMARY" if self.index == 0 else "COMPRESSED_IMAGE" if self.compressed else ""

    @functools.cached_property
    def ver(self) -> int:
        ver = self.cards.get("EXTVER", 1)
        return int(ver) if isinstance(ver, int) else 1

    @functools.cached_property
    def shape(self) -> tuple[int, ...] | None:
        """The image's shape (numpy order) when this HDU holds one (compressed or not), else None."""
        c = self.cards
        if self.compressed:
            prefix = "Z"
        elif self.index == 0 or c.get("XTENSION") == "IMAGE":
            prefix = ""
            if c.get("GROUPS") is True:
                return None
        else:
            return None
        n = int(c.get(f"{prefix}NAXIS", 0))
        shape = tuple(int(c.get(f"{prefix}NAXIS{i}", 0)) for i in range(n, 0, -1))
        return shape or None

    def stack_shape(self) -> tuple[int, ...] | None:
        """The shape when this HDU is an image hpc_sr upscales ((H, W) or (N, H, W), no lookup table)."""
        shape = self.shape
        if shape is None or len(shape) not in (2, 3) or min(shape) < 1 or self.name in fits_wcs.LOOKUP_TABLES:
            return None
        return shape

    def describe(self) -> str:
        shape = self.shape
        kind = "compressed image" if self.compressed else "image" if shape else self.cards.get("XTENSION")
        what = f"{kind} {shape}" if shape else f"{kind or 'header only'}, no image data"
        return f"{self.index} {self.name or '?'} ({what})"


def _data_size(cards: Cards) -> int:
    naxis = int(cards.get("NAXIS", 0))
    if naxis == 0:
        return 0
    dims = [int(cards.get(f"NAXIS{i}", 0)) for i in range(1, naxis + 1)]
    if cards.get("GROUPS") is True and dims[0] == 0:
        dims = dims[1:]
    n = math.prod(dims)
    return abs(int(cards["BITPIX"])) // 8 * int(cards.get("GCOUNT", 1)) * (int(cards.get("PCOUNT", 0)) + n)


def _padded(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


def scan(raw: bytes, path: Path) -> list[Hdu]:
    """The HDUs of a FITS file's bytes; DataError naming ``path`` for a file that is not FITS or truncated."""
    hdus: list[Hdu] = []
    pos = 0
    while pos < len(raw):
        start = raw[pos : pos + 9]
        if start != (b"SIMPLE  =" if pos == 0 else b"XTENSION="):
            if pos == 0:
                raise DataError(f"{path}: not a FITS file (it does not start with SIMPLE)")
            break  # bytes after the last HDU: astropy ignores them too
        end = pos
        while True:
            end = raw.find(b"END", end)
            if end < 0:
                raise DataError(f"{path}: HDU {len(hdus)} has no END card")
            if (end - pos) % CARD == 0 and not raw[end + 3 : end + CARD].strip():
                break
            end += 1
        cards = Cards.parse(raw[pos:end])
        try:
            size = _data_size(cards)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: HDU {len(hdus)} has a bad structure card: {exc}") from None
        data_start = pos + _padded(end + CARD - pos)
        if data_start + size > len(raw):
            raise DataError(f"{path}: HDU {len(hdus)} is truncated")
        hdus.append(Hdu(len(hdus), cards, pos, data_start, size, min(data_start + _padded(size), len(raw))))
        pos = data_start + _padded(size)
    return hdus


def _gunzipped(raw: bytes, path: Path) -> bytes:
    try:
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None


def load(path: Path) -> bytes:
    """The bytes of a FITS file (gunzipped when gzipped); DataError naming the file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    return _gunzipped(raw, path)


def _headers(path: Path) -> list[Hdu]:
    """The HDUs of a file (one open and read), reading only its headers when it is large and not gzipped
    (memory-mapped)."""
    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size > MMAP_FROM:
                if fh.read(2) != b"\x1f\x8b":
                    with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                        return scan(mm, path)  # type: ignore[arg-type]
                fh.seek(0)
            raw = fh.read()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    return scan(_gunzipped(raw, path), path)


def _summary(hdus: list[Hdu]) -> str:
    return ", ".join(h.describe() for h in hdus)


def select(hdus: list[Hdu], wanted: tuple[str, ...], path: Path) -> list[Hdu]:
    """The HDUs to upscale: every science image (error, quality, weight and mask maps are copied at the
    input's resolution: a super-resolved bitmask or error map would be wrong; name them to force it), or
    those ``wanted`` names (see the module docstring)."""
    images = [h for h in hdus if h.stack_shape() is not None]
    if not images:
        raise NotAnImage(f"{path}: holds no image HDU: {_summary(hdus)}")
    if not wanted:
        science = [h for h in images if not ANCILLARY.match(h.name)]
        return science or images
    chosen: dict[int, Hdu] = {}
    for entry in wanted:
        name, _, ver = str(entry).partition(",")
        key = fits_io.parse_hdu(name)
        try:
            version = int(ver) if ver.strip() else None
        except ValueError:
            raise DataError(f"{path}: HDU {entry!r}: EXTVER {ver!r} is not a number") from None
        if isinstance(key, int) and version is None:
            found = [h for h in hdus if h.index == key]
        else:
            found = [h for h in hdus if h.name == str(key).upper() and version in (None, h.ver)]
        if not found:
            raise DataError(f"{path}: no HDU {entry!r}; HDUs: {_summary(hdus)}")
        for h in found:
            if h.stack_shape() is None:
                raise DataError(f"{path}: HDU {entry!r} is not a 2-D image or (N, H, W) cube: {h.describe()}")
            chosen[h.index] = h
    return [chosen[i] for i in sorted(chosen)]


def wcs_form(cards: Cards, scale: int, compressed: bool) -> tuple[Any, ...] | None:
    """What decides how a header's WCS is rescaled and whether astropy reads it back: the keys, the kind of
    each value (string, logical, number) and the value of the cards that name a WCS's type (CTYPE, CUNIT,
    RADESYS, distortions, SIP orders...). None for a WCS that reads lookup or -TAB tables: always checked."""
    form = []
    for image in cards.images:
        if image.startswith(_FORM_PREFIXES):
            key = image[:8].rstrip()
            if _TABLE_CARD.match(key):
                return None
            if _FORM_VALUES.match(key):
                form.append((key, card_value(image)))
                continue
        elif image[:8] in _COMMENTARY_HEADS:
            continue
        c = image[10:30].lstrip()[:1] if image[8:10] == "= " else "-"
        form.append(image[:8] + (c if c in "'TF-" else "n" if c else ""))
    return (scale, compressed, frozenset(form))


class _Recorder(Cards):
    """Cards that note the keys set on them (and on their copies)."""

    __slots__ = ("touched",)

    def __init__(self, images: list[str], touched: list[str]) -> None:
        super().__init__(images)
        self.touched = touched

    def copy(self) -> _Recorder:
        return self._copy_to(_Recorder(list(self.images), self.touched))

    def __setitem__(self, key: str, value: Any) -> None:
        self.touched.append(key)
        super().__setitem__(key, value)


def rescaled(cards: Cards, scale: int, form: tuple[Any, ...] | None) -> Cards:
    """:func:`hpc_sr.apps.fits_wcs.rescale_wcs_header` of ``cards``, memoised: for one WCS form the rescale
    sets the same cards, each from its own old value, so a header whose cards of that set equal a seen
    header's gets the seen output cards (survey cutouts of one size and pixel scale differ in CRVAL only)."""
    if form is None:
        return fits_wcs.rescale_wcs_header(cards, scale)
    touched = _TOUCHED.get(form)
    if touched is not None:
        found = _RESCALED.get((form, *map(cards.card, touched)))
        if found is not None:
            out = cards.copy()
            for key, images in zip(touched, found, strict=True):
                out.put(key, list(images))
            return out
    out = fits_wcs.rescale_wcs_header(_Recorder(cards.images, []), scale)
    touched = _TOUCHED.setdefault(form, list(dict.fromkeys(out.touched)))
    if len(_RESCALED) >= MEMO:
        _RESCALED.clear()
    _RESCALED[(form, *map(cards.card, touched))] = tuple(out.card(key) for key in touched)
    return Cards(out.images)


# ----------------------------------------------------------------------------------------------- pixels
def _pixels(raw: bytes, h: Hdu, astropy_hdul: Any) -> np.ndarray:
    """An HDU's image in native byte order, BSCALE / BZERO applied and BLANK pixels NaN (astropy reads
    compressed and scaled images, numpy the rest)."""
    c = h.cards
    bitpix = int(c["BITPIX"])
    scaled = c.get("BSCALE", 1) != 1 or c.get("BZERO", 0) != 0 or (bitpix > 0 and "BLANK" in c)
    if h.compressed or scaled:
        return np.array(astropy_hdul()[h.index].data)
    shape = h.shape or ()
    data = np.frombuffer(raw, _DTYPES[bitpix], int(np.prod(shape, dtype=np.int64)), h.data_start)
    return data.reshape(shape).astype(data.dtype.newbyteorder("="))


def _block(data: np.ndarray) -> bytes:
    """Big-endian image bytes, zero-padded to a multiple of 2880."""
    raw = np.ascontiguousarray(data, data.dtype.newbyteorder(">")).tobytes()
    return raw + b"\0" * (-len(raw) % BLOCK)


def _extension_bytes(hdu: Any) -> bytes:
    """The bytes of one astropy extension HDU as it is written after a primary HDU."""
    fits = _fits()
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buf, output_verify="silentfix")
    return buf.getvalue()[BLOCK:]  # an empty primary header is one block


# ----------------------------------------------------------------------------------------------- the format
@dataclass
class _Image:
    """A chosen HDU as read: where its images are in the ImageSet and what its output needs."""

    hdu: Hdu
    header: Cards  # the image header (of the compressed image for a tile-compressed HDU)
    shape: tuple[int, ...]  # (H, W) or (N, H, W)
    first: int  # its first image in the ImageSet
    dtype: type  # the output type
    bunit: str | None
    label: str
    compression: dict[str, Any] | None
    form: tuple[Any, ...] | None
    tables: list[tuple[str, int]]

    @property
    def count(self) -> int:
        return 1 if len(self.shape) == 2 else self.shape[0]

    @property
    def science(self) -> bool:
        """An image that gets an error extension (not itself an error / quality / weight map)."""
        clas2 = str(self.header.get("HDUCLAS2", "")).strip().upper()
        return not ANCILLARY.match(self.hdu.name) and clas2 not in ("ERROR", "QUALITY")


@dataclass
class _Source:
    raw: bytes
    hdus: list[Hdu]
    images: list[_Image]

    def astropy(self) -> Any:
        return _fits().open(io.BytesIO(self.raw), memmap=False)


@FORMATS.register("fits")
class FitsFormat:
    """FITS files (see the module docstring)."""

    suffixes = fits_io.FITS_SUFFIXES

    def plan(self, src: Path, rel: Path, out_dir: Path, opts: InferenceOptions) -> list[Unit]:
        hdus = _headers(src)
        chosen = select(hdus, tuple(opts.hdus), src)
        pixels = sum(math.prod(h.stack_shape() or ()) for h in chosen)
        target = out_dir / rel.parent / output_name(rel.name, opts.suffix)
        return [Unit(rel.as_posix(), src, "fits", target, pixels, {"hdus": [h.index for h in chosen]})]

    def read(self, unit: Unit, opts: InferenceOptions) -> ImageSet:
        raw = load(unit.src)
        hdus = scan(raw, unit.src)
        hdul: list[Any] = []

        def astropy() -> Any:
            if not hdul:
                hdul.append(_fits().open(io.BytesIO(raw), memmap=False))
            return hdul[0]

        images, flux, labels, chosen = [], [], [], []
        primary_bunit = hdus[0].cards.get("BUNIT")
        try:
            for h in select(hdus, tuple(opts.hdus), unit.src):
                label = f"{unit.src}[{h.index}]"
                data = _pixels(raw, h, astropy)
                header = Cards.from_header(astropy()[h.index].header) if h.compressed else h.cards
                compression = fits_io.compression_of(astropy()[h.index]) if h.compressed else None
                form = wcs_form(header, opts.scale, h.compressed)
                if form not in _VERIFIED:
                    fits_wcs.refuse_unsupported(header, label)
                tables = fits_wcs.table_refs(header.header()) if form is None else []
                bunit = header.get("BUNIT", primary_bunit if h.index > 0 else None)
                bunit = None if bunit is None else str(bunit)
                mode = fits_io.resolve_flux(opts.flux, bunit, label)
                planes = [data] if data.ndim == 2 else list(data)
                names = [label] if data.ndim == 2 else [f"{label}[{i}]" for i in range(len(planes))]
                dtype = fits_io.output_dtype(data)
                chosen.append(
                    _Image(h, header, data.shape, len(images), dtype, bunit, label, compression, form, tables)
                )
                images += [np.array(p, dtype=np.float32) for p in planes]
                flux += [mode] * len(planes)
                labels += names
        except (DataError, OSError):
            raise
        except Exception as exc:  # noqa: BLE001 - astropy raises many kinds for a damaged file
            raise DataError(f"{unit.src}: cannot read FITS: {type(exc).__name__}: {exc}") from None
        finally:
            if hdul:
                hdul[0].close()
        return ImageSet(unit, images, flux, labels, _Source(raw, hdus, chosen))

    def write(self, images: ImageSet, results: Results, opts: InferenceOptions) -> list[Path]:
        src: _Source = images.context
        unit, scale = images.unit, int(opts.scale)
        _check_results(images, results, scale)
        errs = _error_names(src) if results.sigma is not None else {}
        count = len(src.hdus) + len(errs)
        chosen = {img.hdu.index: img for img in src.images}
        refs = {ref for img in src.images for ref in img.tables}
        left = [h.describe() for h in src.hdus if h.index not in chosen and h.stack_shape() is not None]
        blobs: list[bytes] = []
        to_check: list[tuple[int, _Image]] = []
        hdul: list[Any] = []

        def astropy() -> Any:
            if not hdul:
                hdul.append(src.astropy())
            return hdul[0]

        try:
            for h in src.hdus:
                img = chosen.get(h.index)
                if img is not None:
                    part = slice(img.first, img.first + img.count)
                    err = errs.get(h.index)
                    header = _sr_cards(img, results.notes[part], results.history, opts, err, left)
                    if h.index == 0 and count > 1 and "EXTEND" not in header:
                        header.insert_after(r"^NAXIS\d*$", "EXTEND", True)
                    if h.index == 0 and "NEXTEND" in header:
                        header["NEXTEND"] = count - 1
                    if img.form not in _VERIFIED:
                        to_check.append((len(blobs), img))
                    blobs.append(_image_bytes(header, _stack(results.images[part], img), img))
                    if err is not None and results.sigma is not None:
                        err_header = _err_cards(header, img, err, opts, results)
                        blobs.append(_image_bytes(err_header, _stack(results.sigma[part], img), img))
                elif (h.name, h.ver) in refs:
                    blobs.append(_extension_bytes(fits_wcs.rescale_wcs_table(astropy()[h.index], scale)))
                else:
                    blobs.append(_copied(src, h, count))
            data = b"".join(blobs)
            odd = _nonstandard(src, [img for _, img in to_check])
            if odd and any(img.compression for img in src.images):
                data = fits_cards.restore_cards(data, odd)  # astropy re-formatted them in compressed headers
            if to_check:
                _check_wcs(data, to_check, astropy if refs else None, scale)
        finally:
            if hdul:
                hdul[0].close()
        if unit.src.name.lower().endswith(".gz"):
            data = gzip.compress(data, mtime=0)
        with publish.output(unit.target, "wb") as fh:
            fh.write(data)
        return [unit.target]

    def finish(self, units: list[Unit], opts: InferenceOptions) -> list[Path]:
        return []  # one unit per file: nothing to merge


# ----------------------------------------------------------------------------------------------- writing
def _check_results(images: ImageSet, results: Results, scale: int) -> None:
    n = len(images.images)
    sigma = results.sigma
    if len(results.images) != n or (sigma is not None and len(sigma) != n) or len(results.notes) != n:
        raise DataError(f"{images.unit.src}: {len(results.images)} SR images / notes for {n} inputs")
    for lr, label, sr in zip(images.images, images.labels, results.images, strict=True):
        want = (scale * lr.shape[0], scale * lr.shape[1])
        if tuple(sr.shape) != want:
            raise DataError(f"{label}: SR image of shape {tuple(sr.shape)}, expected {want}")


def _stack(planes: list[np.ndarray], img: _Image) -> np.ndarray:
    data = np.stack(planes) if len(img.shape) == 3 else planes[0]
    return np.asarray(data, dtype=img.dtype)


def _error_names(src: _Source) -> dict[int, tuple[str, int]]:
    """(EXTNAME, EXTVER) of the error extension of each science image: ('ERR', its EXTVER), or 'SR_ERR' for
    all of them when the file has an ERR of such an EXTVER already (a later free EXTVER on a clash)."""
    taken = {(h.name, h.ver) for h in src.hdus}
    science = [img for img in src.images if img.science]
    vers = [img.hdu.ver for img in science]
    free = len(set(vers)) == len(vers) and not any(("ERR", v) in taken for v in vers)
    names = {}
    for img, ver in zip(science, vers, strict=True):
        name = "ERR" if free else "SR_ERR"
        while (name, ver) in taken:
            ver += 1
        taken.add((name, ver))
        names[img.hdu.index] = (name, ver)
    return names


def _common(notes: list[dict[str, Any]], key: str, default: Any) -> Any:
    values = {repr(n.get(key, default)) for n in notes}
    return notes[0].get(key, default) if len(values) == 1 else None


def _sr_cards(
    img: _Image,
    notes: list[dict[str, Any]],
    history: list[str],
    opts: InferenceOptions,
    err: tuple[str, int] | None,
    left: list[str],
) -> Cards:
    """The header of an upscaled HDU: WCS rescaled, HPCSR* cards, the ESO link to its error map, HISTORY."""
    scale = int(opts.scale)
    norm_of = [fits_io.Normalization(n.get("normalize", "none"), n["offset"], n["scale"]) for n in notes]
    flux = _common(notes, "flux", "?")
    same = len(set(norm_of)) == 1
    cards = fits_io.provenance_cards(scale, norm_of[0], flux or "mixed")
    if not same:
        cards["HPCSRNRM"] = ("per-plane", "hpc_sr normalisation: see HISTORY, one line per plane")
        del cards["HPCSROFF"], cards["HPCSRSCL"]
    header = fits_io.sr_header(img.header, scale, cards, img.label, lambda h, s: rescaled(h, s, img.form))
    header["BITPIX"] = -64 if img.dtype == np.float64 else -32
    if err is not None:
        for key, value in ERR_KEYWORDS.items():
            header[key] = value
        header["HDUCLAS2"] = ("DATA", "science data")
        header["ERRDATA"] = (err[0], "EXTNAME of the error map (same EXTVER)")
    for line in history:
        header.add_history(line)
    planes = [(None, (norm_of[0], notes[0]))] if same else list(enumerate(zip(norm_of, notes)))
    for i, (norm, note) in planes:
        line = fits_io.choice_note(norm, note.get("flux", flux), img.bunit, scale)
        header.add_history(line if i is None else f"plane {i}: {line}")
    if left:
        header.add_history(f"hpc_sr: not upscaled, copied at the input resolution: {'; '.join(left)}")
    if err is not None:
        header.add_history(f"hpc_sr: per-pixel error map in extension {err[0]},{err[1]}")
    return header


def _err_cards(
    sci: Cards, img: _Image, err: tuple[str, int], opts: InferenceOptions, results: Results
) -> Cards:
    """The header of an error extension: structure, EXTNAME/EXTVER, the ESO class keywords, SCIDATA, then the
    science header's cards (WCS, BUNIT, ...) but its identity, class and HISTORY."""
    shape = img.shape[:-2] + (img.shape[-2] * opts.scale, img.shape[-1] * opts.scale)
    out = Cards([])
    out["XTENSION"] = ("IMAGE", "Image extension")
    out["BITPIX"] = -64 if img.dtype == np.float64 else -32
    out["NAXIS"] = len(shape)
    for i, n in enumerate(reversed(shape), 1):
        out[f"NAXIS{i}"] = n
    out["PCOUNT"], out["GCOUNT"] = 0, 1
    out["EXTNAME"] = (err[0], "per-pixel error (1 sigma) of the SR image")
    out["EXTVER"] = err[1]
    for key, value in ERR_KEYWORDS.items():
        out[key] = value
    out["HDUCLAS2"] = ("ERROR", "error map")
    out["HDUCLAS3"] = ("RMSE", "root mean square error (standard deviation)")
    if img.hdu.name:
        out["SCIDATA"] = (img.hdu.name, "EXTNAME of the science data (same EXTVER)")
    keep, kept = True, []
    for image in sci.images:
        key = image[:8].rstrip()
        keep = keep if key == "CONTINUE" else not _NOT_IN_ERR.match(key)
        if keep:
            kept.append(image)
    out.extend(kept)
    out.add_history(
        f"hpc_sr: RMSE of the SR image: per-pixel standard deviation of {opts.samples} generator samples, in "
        f"the data's units"
    )
    for line in results.history:  # the run's record of the samples and of their spread calibration
        if re.search(r"sampl|calibrat|sigma|spread", line, re.IGNORECASE):
            out.add_history(line)
    calibration = _common(results.notes, "calibration", None)
    if calibration:
        out.add_history(f"hpc_sr spread calibration: {calibration}")
    return out


def _image_bytes(header: Cards, data: np.ndarray, img: _Image) -> bytes:
    if img.compression is None:
        return header.tobytes() + _block(data)
    hdu, notes = fits_io.image_hdu(
        data, header.header(), primary=False, compression=img.compression, in_width=img.shape[-1]
    )
    for line in notes:
        hdu.header.add_history(line)
    return _extension_bytes(hdu)


def _copied(src: _Source, h: Hdu, count: int) -> bytes:
    """An HDU copied as stored (a primary's NEXTEND kept true when error extensions were added)."""
    body = src.raw[h.start : h.end]
    body += b"\0" * (-len(body) % BLOCK)
    if h.index != 0 or count == len(src.hdus) or "NEXTEND" not in h.cards:
        return body
    cards = h.cards.copy()
    cards["NEXTEND"] = count - 1
    for key in ("CHECKSUM", "DATASUM"):
        cards.remove(key, ignore_missing=True)
    return cards.tobytes() + body[h.data_start - h.start :]


def _nonstandard(src: _Source, checked: list[_Image]) -> dict[bytes, bytes]:
    """Non-standard cards (:func:`hpc_sr.apps.fits_cards.nonstandard_cards`) of the headers of the images
    whose WCS form is new (and of the primary header then) or that are compressed: said once per form."""
    heads = [img.hdu for img in src.images if img.compression or img in checked]
    if checked and src.hdus[0] not in heads:
        heads.append(src.hdus[0])
    odd: dict[bytes, bytes] = {}
    for h in heads:
        odd.update(fits_cards.nonstandard_cards(h.cards.tobytes()))
    if odd:
        names = ", ".join(fits_cards.card_names(odd))
        label = src.images[0].label
        fits_io.warn(f"{label}: non-standard card(s) {names} copied byte for byte (astropy would re-format)")
    return odd


def _check_wcs(data: bytes, to_check: list[tuple[int, _Image]], astropy: Any, scale: int) -> None:
    """Read the rescaled WCS of each image back with astropy (checks of fits_wcs.check_rescaled_wcs); a WCS
    form that passes is not checked again in this process."""
    fits = _fits()
    with fits.open(io.BytesIO(data), memmap=False) as written:
        for pos, img in to_check:
            tables = astropy() if img.tables and astropy is not None else fits.HDUList([fits.PrimaryHDU()])
            before = (img.header.header(), tables)
            after = (written[pos].header, written)
            for note in fits_wcs.check_rescaled_wcs(before, after, img.shape[-2:], scale, img.label):
                fits_io.warn(f"{img.label}: {note}")
            if img.form is not None:
                _VERIFIED[img.form] = True
