"""Imports point one way: every import of every hpc_sr module (module level and inside functions) goes to its
own layer or below, and no two modules import each other at module level.

Layers, top to bottom (a module may import its own row or below)::

    hpc_sr (the public API), cli, __main__
    launch, studies
    apps
    train
    eval
    models, data
    dist
    config, registry, imaging
    atomic, errors, version

eval is a leaf over the core: it imports only dist and the rows below it (never models or data); what
needs the simulator's truth lives in data/ and hands eval arrays.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hpc_sr"
LAYERS: dict[str, int] = {
    "hpc_sr": 8, "cli": 8, "__main__": 8,
    "launch": 7, "studies": 7,
    "apps": 6,
    "train": 5,
    "eval": 4,
    "models": 3, "data": 3,
    "dist": 2,
    "config": 1, "registry": 1, "imaging": 1,
    "atomic": 0, "errors": 0, "version": 0,
}  # fmt: skip


def layer_of(module: str) -> int:
    """Layer of a dotted module name (``hpc_sr.train.step`` -> train's)."""
    parts = module.split(".")
    if parts[0] != "hpc_sr":
        raise ValueError(module)
    if len(parts) == 1:
        return LAYERS["hpc_sr"]
    return LAYERS[parts[1]]


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(source: str, module: str) -> list[tuple[str, int, bool]]:
    """(imported hpc_sr module, line, at module level) for every import in ``source``."""
    tree = ast.parse(source)
    top_level = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against the package
                base = (
                    module.split(".")[: -node.level] if not module.endswith("__init__") else module.split(".")
                )
                names = [".".join(base + ([node.module] if node.module else []))]
            elif node.module:
                names = [node.module]
                names += [f"{node.module}.{a.name}" for a in node.names if node.module == "hpc_sr"]
        for name in names:
            if name == "hpc_sr" or name.startswith("hpc_sr."):
                found.append((name, node.lineno, id(node) in top_level))
    return found


def violations(source: str, module: str) -> list[str]:
    """Imports of ``module`` that point to a higher layer."""
    own = layer_of(module)
    bad = []
    for target, line, _ in imports_of(source, module):
        try:
            their = layer_of(target)
        except KeyError:
            bad.append(f"{module}:{line} imports {target}, which is in no layer (add it to LAYERS)")
            continue
        if their > own:
            bad.append(f"{module}:{line} imports {target} (layer {their} above its own {own})")
    return bad


def all_modules() -> dict[str, str]:
    return {module_name(p): p.read_text() for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_import_points_down_or_across_its_own_row() -> None:
    problems = [v for mod, src in all_modules().items() for v in violations(src, mod)]
    assert not problems, "\n".join(problems)


def test_no_module_level_import_cycles() -> None:
    mods = all_modules()
    graph = {
        m: {t for t, _, top in imports_of(src, m) if top and t in mods and t != m} for m, src in mods.items()
    }
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m: str, stack: list[str]) -> bool:
        state[m] = 1
        for t in graph[m]:
            if state.get(t) == 1:
                cycle.extend(stack[stack.index(t) :] + [t] if t in stack else [m, t])
                return True
            if state.get(t) is None and visit(t, [*stack, t]):
                return True
        state[m] = 2
        return False

    for m in graph:
        if state.get(m) is None and visit(m, [m]):
            break
    assert not cycle, " -> ".join(cycle)


EVAL_MAY_IMPORT = {"eval", "dist", "config", "registry", "imaging", "atomic", "errors", "version"}


def test_eval_is_a_leaf_that_imports_neither_models_nor_data() -> None:
    for mod, src in all_modules().items():
        if mod.startswith("hpc_sr.eval"):
            targets = {t.split(".")[1] for t, _, _ in imports_of(src, mod) if "." in t}
            assert targets <= EVAL_MAY_IMPORT, f"{mod} imports {sorted(targets - EVAL_MAY_IMPORT)}"


@pytest.mark.parametrize(
    ("module", "source", "caught"),
    [
        ("hpc_sr.eval.metrics", "from hpc_sr.train.trainer import Trainer\n", True),
        ("hpc_sr.models.rcan", "def f():\n    from hpc_sr.apps.evaluate import evaluate\n", True),
        ("hpc_sr.dist.env", "import hpc_sr.data.shards\n", True),
        ("hpc_sr.train.step", "from hpc_sr.models.losses import LossInputs\n", False),
        ("hpc_sr.apps.upscale", "from hpc_sr.launch.slurm import submit\n", True),
        ("hpc_sr.studies.downstream", "from hpc_sr.apps.evaluate import evaluate\n", False),
        ("hpc_sr.apps.evaluate", "from hpc_sr.studies.downstream import train_regressor\n", True),
    ],
)
def test_the_checker_catches_an_upward_import(module: str, source: str, caught: bool) -> None:
    assert bool(violations(source, module)) is caught
