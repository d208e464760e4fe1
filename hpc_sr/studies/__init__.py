"""Research studies on simulated lensing data, each one module with its logic and its command.

    python -m hpc_sr.studies STUDY [ARGS ...]     (or: hpc-sr study STUDY [ARGS ...])

Nothing in the package imports a study: they are built on the library, not part of it. The figures of
docs/RESULTS.md and docs/EVALUATION.md come from them.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

__all__ = ["STUDIES", "main", "usage"]

# name -> one-line description; the module hpc_sr.studies.<name> has main(argv, prog).
STUDIES: dict[str, str] = {
    "ceiling": "the noise-limited ceiling of a simulated split: the most any x2 model can gain over bicubic",
    "downstream": "how much of the bicubic-to-HR error in measuring the lens (theta_E, e1, e2) SR closes",
    "instruments": "ground-to-space SR: deconvolution, scratch on N pairs, pre-training, k-fold fine-tuning",
    "perception": "GANs on the perception-distortion plane, beside a PSNR model plus noise",
    "robustness": "generators trained on one simulator preset, evaluated on every preset's test split",
    "zoo": "every zoo generator trained on the same CPU budget, evaluated beside the noise ceiling",
}


def usage(prog: str) -> str:
    """The help text: how to run a study, and every study with its description."""
    width = max(map(len, STUDIES))
    rows = [f"  {name:<{width}}  {text}" for name, text in STUDIES.items()]
    return "\n".join(
        [f"usage: {prog} STUDY [ARGS ...]   ({prog} STUDY --help: its arguments)", "", "studies:", *rows]
    )


def main(argv: Sequence[str] | None = None, prog: str = "hpc-sr study") -> int:
    """Run study ``argv[0]`` with the rest of ``argv``; --help (or nothing) lists the studies."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage(prog), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in STUDIES:
        print(usage(prog), file=sys.stderr)
        print(f"{prog}: error: unknown study {name!r}; choose from {', '.join(STUDIES)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"{__name__}.{name}")
    return int(module.main(rest, prog=f"{prog} {name}") or 0)
