"""Keep README's demo table in step with the code: the block between ``<!-- demo-table -->`` markers is the
table ``hpc-sr demo`` prints, rendered by :func:`hpc_sr.apps.evaluate.format_table` from the demo's recorded
result (docs/demo_eval_test.json).

    python tools/readme_demo.py --run        # a fresh `hpc-sr demo` (about 5 min on 2 CPU cores): new figures
    python tools/readme_demo.py --check      # README's block == the recorded result in today's format
    python tools/readme_demo.py              # rewrite README's block from the recorded result

``tests/tools/test_readme_demo.py`` runs ``--check``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hpc_sr.apps.evaluate import format_table  # noqa: E402
from hpc_sr.atomic import atomic_write_text  # noqa: E402

README = ROOT / "README.md"
RECORD = ROOT / "docs" / "demo_eval_test.json"
BEGIN, END = "<!-- demo-table -->", "<!-- /demo-table -->"
TABLE_LINES = 5  # header, model, bicubic, ceiling, the gain line (the physics table follows in the demo)


def render(result: dict) -> str:
    """The README block: the first lines of the table the demo prints, fenced."""
    lines = format_table(result).splitlines()[:TABLE_LINES]
    return "```\n" + "\n".join(lines) + "\n```"


def split_readme(text: str) -> tuple[str, str, str]:
    """(before, block, after) around the demo-table markers; SystemExit naming README without them."""
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise SystemExit(f"{README}: expected one {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    block, tail = rest.split(END, 1)
    return head + BEGIN + "\n", block.strip(), "\n" + END + tail


def fresh_run() -> None:
    """Run the demo in a temporary directory and record its test-split result."""
    from hpc_sr.apps.demo import run_demo

    with tempfile.TemporaryDirectory() as tmp:
        if run_demo(Path(tmp) / "demo") != 0:
            raise SystemExit("the demo failed")
        shutil.copyfile(Path(tmp) / "demo" / "runs" / "quickstart" / "eval_test.json", RECORD)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--run", action="store_true", help="run the demo afresh, record it, rewrite README")
    mode.add_argument("--check", action="store_true", help="exit 1 when README's block is out of step")
    a = ap.parse_args(argv)
    if a.run:
        fresh_run()
    want = render(json.loads(RECORD.read_text()))
    head, block, tail = split_readme(README.read_text())
    if a.check:
        if block != want:
            print(f"{README}: the demo table is out of step with {RECORD.name} and the code:\n"
                  f"README:\n{block}\nexpected:\n{want}\n(run python tools/readme_demo.py)", file=sys.stderr)
            return 1
        return 0
    atomic_write_text(README, head + want + tail)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
