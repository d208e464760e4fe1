"""Write the pairs of packed sets back out in the DeepLense layout (OUT/HR/*.npy, OUT/LR/*.npy).

What it is for: one training set made of several (a mixture of presets or of instruments), packed again
with ``hpc-sr pack --from deeplense``:

    python tools/export_deeplense.py --out mix_src --splits train,val \
        data/deeplense_sr data/wide data/ground_space data/randomized
    hpc-sr pack --from deeplense --src mix_src --out data/mix --split 0.9,0.1,0

Only the chosen splits are written (default train and val), so no set's test pairs reach the mixture's
training split, and each set's own test split stays the one to evaluate on. A pair is named
``SET_SPLIT_INDEX`` (the set's folder name, its split, its global index in the set): HR and LR of a pair share
the name. Beside them ``lr_blur.csv`` (``name,lr_blur``): each pair's LR blur (hpc_sr.data.lr_blur: from
each set's per-pair instrument parameters or lr_blur rows, 0 where LR is the block mean), which ``hpc-sr
pack`` keeps for a generator told its LR's blur (``model.g.lr_blur_input``); it is left out, with a note,
when a set records none. Every file is written atomically; an output folder that already holds pairs is
refused.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpc_sr.atomic import atomic_open, atomic_write_text
from hpc_sr.data.lr_blur import LR_BLUR_KEY, pair_lr_blur
from hpc_sr.data.shards import SPLITS, load_manifest
from hpc_sr.errors import DataError, HpcSrError


def export_pairs(
    sets: Sequence[str | Path], out: str | Path, splits: Sequence[str] = ("train", "val")
) -> int:
    """Write the ``splits`` pairs of every packed set in ``sets`` under ``out``/HR and ``out``/LR; returns
    how many pairs."""
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise HpcSrError(f"--splits {','.join(splits)!r}: choose among {', '.join(SPLITS)}")
    out = Path(out)
    if any((out / d).is_dir() and any((out / d).iterdir()) for d in ("HR", "LR")):
        raise HpcSrError(f"{out}: already holds pairs (HR/ or LR/ is not empty); choose another folder")
    names = [Path(s).resolve().name for s in sets]
    if len(set(names)) != len(names):
        raise HpcSrError(f"two sets share a folder name ({', '.join(names)}): pair names would collide")
    for d in ("HR", "LR"):
        (out / d).mkdir(parents=True, exist_ok=True)
    written, blur_rows = 0, []
    blur_note = None
    for root, name in zip(sets, names):
        m = load_manifest(root)
        for split in splits:
            idx = m.split_indices(split)
            try:
                blur = pair_lr_blur(root, idx, "data")
                blur_rows += [f"{name}_{split}_{int(g):07d},{b:.6g}" for g, b in zip(idx, blur)]
            except DataError as exc:
                blur_note = str(exc)
            shard, local = m.locate(idx)
            for s in np.unique(shard):
                mine = shard == s
                with h5py.File(m.shard_path(int(s)), "r") as f:
                    hr, lr = f["hr"], f["lr"]
                    for g, j in zip(idx[mine], local[mine]):
                        stem = f"{name}_{split}_{int(g):07d}"
                        for key, ds in (("HR", hr), ("LR", lr)):
                            with atomic_open(out / key / f"{stem}.npy") as fh:
                                np.save(fh, np.asarray(ds[int(j), 0], dtype=np.float32))
                        written += 1
    if blur_note is None:
        atomic_write_text(out / f"{LR_BLUR_KEY}.csv", "\n".join([f"name,{LR_BLUR_KEY}", *blur_rows]) + "\n")
    else:
        print(f"note: no {LR_BLUR_KEY}.csv written: {blur_note}", file=sys.stderr)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sets", nargs="+", help="packed set folders (manifest.json + shards)")
    ap.add_argument("--out", required=True, help="folder to write HR/*.npy and LR/*.npy into")
    ap.add_argument("--splits", default="train,val", help="comma-separated splits (default train,val)")
    a = ap.parse_args(argv)
    try:
        n = export_pairs(a.sets, a.out, [s for s in a.splits.split(",") if s])
    except HpcSrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {n} pairs to {a.out} (HR/, LR/): pack them with hpc-sr pack --from deeplense --src {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
