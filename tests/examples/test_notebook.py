"""examples/quickstart.ipynb runs top to bottom in a fresh Jupyter kernel and prints what it promises.

The kernel is this interpreter (``sys.executable -m ipykernel_launcher``), from a kernel spec written under
tmp_path and put first on JUPYTER_PATH: no ``ipykernel install`` step, and no ``python3`` kernel of another
environment (a user's or the system's) can run it instead. The working directory, Jupyter runtime and IPython
directories are under tmp_path. MPLBACKEND=Agg keeps anything outside the notebook's figures headless; the
notebook selects the inline backend itself, so its figures come back as image/png outputs.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow  # a real Jupyter kernel process

nbformat = pytest.importorskip("nbformat", reason="needs the test extra: pip install -e '.[test]'")
nbclient = pytest.importorskip("nbclient", reason="needs the test extra: pip install -e '.[test]'")
pytest.importorskip("ipykernel", reason="needs the test extra: pip install -e '.[test]'")
pytest.importorskip("astropy", reason="the notebook writes FITS: pip install -e '.[fits]'")

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "quickstart.ipynb"
KERNEL = "hpc-sr-test"
CELL_TIMEOUT_S = 120


def _write_kernel_spec(jupyter_path: Path) -> None:
    """A kernel spec running this interpreter, under ``jupyter_path`` (to be put first on JUPYTER_PATH)."""
    spec_dir = jupyter_path / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python ({sys.executable})",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))


def _outputs(nb: Any) -> tuple[str, list[dict[str, Any]]]:
    """All text the code cells printed (stdout and text/plain results), and every output."""
    text, outputs = [], []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            outputs.append(out)
            if out["output_type"] == "stream" and out["name"] == "stdout":
                text.append(out["text"])
            elif "data" in out and "text/plain" in out["data"]:
                text.append(out["data"]["text/plain"])
    return "\n".join(text), outputs


def test_quickstart_notebook_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_kernel_spec(tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    work = tmp_path / "cwd"
    work.mkdir()

    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit it with outputs cleared"
    client = nbclient.NotebookClient(
        nb, kernel_name=KERNEL, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(work)}}
    )
    start = time.monotonic()
    client.execute()  # raises CellExecutionError, naming the cell, on the first error
    elapsed = time.monotonic() - start

    text, outputs = _outputs(nb)
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert "'deeplense-small'" in text and "rrdb x 2" in text
    assert "LR (8, 75, 75) -> SR (8, 150, 150)" in text
    # the FITS file: the CLI's code path, the array's pixels, every pixel centre at the same sky position
    assert "lens_sr.fits" in text and "pixel scale 0.100 arcsec -> 0.050 arcsec" in text
    diff = float(text.split("max |difference| =")[1].split()[0])
    assert diff < 1e-5
    offset_mas = float(text.split("largest sky offset over 5625 pixel centres:")[1].split()[0])
    assert offset_mas < 1e-3
    # the metric table `hpc-sr evaluate` prints, with the bicubic baseline and the noise ceiling
    rows = ("PSNR  PSNR pooled", "\n  model ", "\nbicubic ", "\nceiling ", "n = 8 images, gain over bicubic")
    for row in rows:
        assert row in text, row
    gain_db = float(text.split("gain over bicubic")[1].split()[0])
    assert gain_db > 0, "the shipped model should beat bicubic on these images"
    # the error map: a stochastic generator's sample mean and calibrated sigma, as --samples writes them
    assert "exit status 0 | mean (4, 150, 150) | sigma (4, 150, 150)" in text
    covered = float(text.split("HR within mean +- sigma:")[1].split("%")[0])
    assert 30 < covered < 95, f"{covered} % of the pixels within one sigma"
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 3, "expected the comparison picture, the power spectrum and the error map"
    assert not list(work.iterdir()), "the notebook wrote into its working directory, not its temporary folder"
    print(f"notebook ran in {elapsed:.1f} s")
