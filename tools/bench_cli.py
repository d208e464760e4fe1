"""How fast the command answers: `hpc-sr --help`, `--version`, `hpc-sr train --help` and `import hpc_sr`
in fresh processes (median of --repeat runs), against a bare `python -c pass` started the same way.

    python tools/bench_cli.py [--repeat 7]

Prints a table and one JSON line. Target: `hpc-sr --help` under 0.3 s (the parser imports nothing heavy; each
command builds its own arguments only when it is the one asked for).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

CASES = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "hpc-sr --help": [sys.executable, "-m", "hpc_sr", "--help"],
    "hpc-sr --version": [sys.executable, "-m", "hpc_sr", "--version"],
    "hpc-sr train --help": [sys.executable, "-m", "hpc_sr", "train", "--help"],
    "import hpc_sr": [sys.executable, "-c", "import hpc_sr"],
}


def measure(repeat: int) -> dict[str, float]:
    """Median wall time of each case, the cases interleaved round-robin (a shared machine's load hits all)."""
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(repeat):
        for name, cmd in CASES.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    a = ap.parse_args(argv)
    result = measure(a.repeat)
    base = result["python -c pass"]
    for name, s in result.items():
        print(f"{name:<22} {s * 1000:7.1f} ms   (+{(s - base) * 1000:6.1f} ms over a bare interpreter)")
    ok = result["hpc-sr --help"] < 0.3
    print(f"hpc-sr --help under 0.3 s: {'yes' if ok else 'NO'}")
    print(json.dumps({"bench": "cli", "seconds": result, "help_under_0_3_s": ok}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
