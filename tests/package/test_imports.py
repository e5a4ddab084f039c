"""The package's import graph: every module imports on its own, module-level imports form no cycle
and point only downward through the layers of docs/architecture.md, and imports inside functions
are the few marked ``# lazy: <reason>``."""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = os.path.join(ROOT, "diffmamba")

# Lower number = lower layer; a module may import only from its own layer or below.
LAYERS = {
    "core": 0, "config": 1, "kernels": 2, "ops": 2, "modules": 3, "model": 4, "model_folder": 4, "data": 4,
    "objectives": 5, "sampling": 6, "train": 7, "eval": 7, "bench": 8, "cli": 9,
}


def _modules() -> dict[str, str]:
    """Dotted module name -> file, for every module of the package."""
    found = {}
    for folder, dirs, files in os.walk(PACKAGE):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        rel = os.path.relpath(folder, PACKAGE)
        prefix = "diffmamba" if rel == "." else "diffmamba." + rel.replace(os.sep, ".")
        for name in files:
            if name.endswith(".py"):
                found[prefix if name == "__init__.py" else f"{prefix}.{name[:-3]}"] = os.path.join(folder, name)
    return found


MODULES = _modules()


def _resolve(module: str, is_package: bool, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The package modules an import statement names (``from a import b`` names a.b when b is a module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in MODULES]
    if node.level:
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    targets = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
    if len(targets) < len(node.names) and base in MODULES:
        targets.append(base)
    return targets


def _imports(module: str, path: str):
    """(module-level package imports, function-level import statements without a lazy comment)."""
    source = open(path).read()
    tree = ast.parse(source)
    lines = source.splitlines()
    top, unmarked = set(), []
    is_package = path.endswith("__init__.py")

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                if in_function:
                    if "# lazy: " not in lines[child.lineno - 1] and "# lazy: " not in lines[child.end_lineno - 1]:
                        unmarked.append(f"{path}:{child.lineno}")
                elif not _under_type_checking(child):
                    top.update(_resolve(module, is_package, child))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    parents = {}
    for parent in ast.walk(tree):
        for child in ast.iter_child_nodes(parent):
            parents[child] = parent

    def _under_type_checking(node) -> bool:
        while node in parents:
            node = parents[node]
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                return True
        return False

    visit(tree, False)
    return top - {module}, unmarked


GRAPH, UNMARKED = {}, []
for _name, _path in MODULES.items():
    GRAPH[_name], _unmarked = _imports(_name, _path)
    UNMARKED += _unmarked


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else -1


def test_every_module_has_a_layer():
    assert sorted({m.split(".")[1] for m in MODULES if "." in m} - set(LAYERS)) == []


def test_module_level_imports_form_no_cycle():
    state, cycles = {}, []

    def walk(node, stack):
        state[node] = "open"
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt, stack + [nxt])
        state[node] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            walk(module, [module])
    assert cycles == []


def test_imports_point_downward():
    upward = [f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets
              if m != "diffmamba" and t != "diffmamba" and _layer(t) > _layer(m)]
    assert upward == []


def test_imports_inside_functions_say_why():
    assert UNMARKED == []


@pytest.mark.slow
def test_every_module_imports_alone():
    """Each module in a fresh interpreter (one subprocess, modules dropped from sys.modules in turn),
    so an import that only works after another module was loaded first is caught."""
    wanted = sorted(m for m in MODULES if not m.startswith("diffmamba.kernels"))
    script = (
        "import importlib, sys\n"
        "keep = set(sys.modules)\n"
        f"for name in {wanted!r}:\n"
        "    for loaded in [m for m in sys.modules if m not in keep and m.startswith('diffmamba')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
    )
    run_fresh(script)


def run_fresh(code: str) -> None:
    """Run ``code`` in a fresh interpreter at the checkout; its failure fails the test."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_repo_paths_point_at_the_checkout():
    """Config defaults resolved from the package must land in this checkout's configs/ (the CLI moved
    one folder down in the restructure, and a path counted from __file__ silently broke then)."""
    from diffmamba.cli import quickstart, smoke
    from diffmamba.core.paths import REPO_ROOT

    assert os.path.isfile(os.path.join(REPO_ROOT, "pyproject.toml"))
    assert os.path.isfile(smoke.DEFAULT_CONFIG)
    assert os.path.isfile(quickstart.resolve_config_path("configs/tiny.yaml"))


def test_help_of_the_commands_that_promise_it_loads_no_torch():
    """`diffmamba train|eval|data|tokenizer|quickstart|bench --help` answer at once: no torch import."""
    code = (
        "import contextlib, io, sys\n"
        "from diffmamba.cli import main\n"
        "for command in ('train', 'eval', 'data', 'tokenizer', 'quickstart', 'bench'):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            main([command, '--help'])\n"
        "        except SystemExit:\n"
        "            pass\n"
        "    assert 'torch' not in sys.modules, command + ' --help imported torch'\n"
    )
    run_fresh(code)


def test_benchmarks_and_sampling_need_no_hugging_face_datasets():
    """`diffmamba bench train | kernels | speculative | decode`, sampling and `eval speed` import no `datasets`
    (the likelihood, generation and infilling evaluations do, on first use): GPU images
    often lack it (the H200 image of 2026-11-27 did), and a benchmark must run there as it is."""
    code = (
        "import sys\n"
        "import diffmamba.bench.train, diffmamba.bench.kernels, diffmamba.bench.speculative, diffmamba.bench.decode\n"
        "import diffmamba.sampling, diffmamba.eval.compare\n"
        "import diffmamba.train.optim\n"
        "assert 'datasets' not in sys.modules, 'datasets was imported'\n"
    )
    run_fresh(code)


def test_the_checkout_root_holds_no_package_but_diffmamba():
    """Python, pytest and ``python -m`` put the checkout root on sys.path, where a package folder
    shadows any installed distribution of the same import name: a top-level ``kernels/`` (our Triton
    code, once) hid Hugging Face's ``kernels``, and transformers' judge import failed on it."""
    packages = sorted(d for d in os.listdir(ROOT) if os.path.isfile(os.path.join(ROOT, d, "__init__.py")))
    assert packages == ["diffmamba"], packages
