"""The package's shape: dependencies flow one way between the wings, no module imports itself back
round a circle, the torch-free front stays torch-free, and docs/architecture.md's table is current."""

import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARCH = runpy.run_path(str(ROOT / "scripts" / "architecture.py"))
GRAPH = ARCH["graph"]()  # module -> (imported at the top, imported inside functions)


def _wing(module: str) -> str:
    return module.split(".")[0] if "." in module or module == "data" else "front"


def _all(module: str) -> set[str]:
    top, lazy = GRAPH[module]
    return top | lazy


@pytest.mark.parametrize(
    "wing, never",
    [
        ("network", {"data", "training", "inference"}),
        ("data", {"network", "training", "inference"}),
        ("inference", {"training"}),
        ("training", {"inference"}),
    ],
)
def test_a_wing_never_imports_the_wings_after_it(wing, never):
    bad = {m: sorted(d for d in _all(m) if _wing(d) in never) for m in GRAPH if _wing(m) == wing}
    assert not {m: d for m, d in bad.items() if d}


def test_the_front_imports_wings_only_where_it_drives_them():
    # config, parsers, presets, checkpoint, runtime, metrics, errors, pictures serve every wing;
    # config reads the spec's output names. Only the CLI and convae.fit drive the wings.
    drivers = {"cli", "api"}
    bad = {
        m: sorted(d for d in _all(m) if _wing(d) != "front" and d != "network.spec")
        for m in GRAPH
        if _wing(m) == "front" and m not in drivers
    }
    assert not {m: d for m, d in bad.items() if d}


def test_there_are_no_import_circles():
    def visit(module, path):
        for dep in _all(module):
            assert dep not in path, " -> ".join([*path, dep])
            visit(dep, [*path, dep])

    for module in GRAPH:
        visit(module, [module])


def test_a_circle_would_be_found():
    """The walk above is what finds one: a graph with a circle fails it."""
    graph = {"a": ({"b"}, set()), "b": (set(), {"a"})}
    with pytest.raises(AssertionError, match="a -> b -> a"):

        def visit(module, path):
            for dep in graph[module][0] | graph[module][1]:
                assert dep not in path, " -> ".join([*path, dep])
                visit(dep, [*path, dep])

        visit("a", ["a"])


def test_config_and_resolving_a_full_config_do_not_import_torch():
    code = (
        "import sys, convae.config as c, convae.parsers\n"
        "cfg = c.resolve_config({'arch': 'inspection', 'noise': 'gaussian:0.1', 'augment': 'flip+shift:2',"
        " 'crop': 64, 'data': 'folder:x'})\n"
        "cfg.validate()\n"
        "import convae, convae.network.spec, convae.data\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_noise_and_augment_texts_are_parsed_once():
    from convae.parsers import Augment, Noise

    assert Noise.parse("gaussian:0.3") is Noise.parse("gaussian:0.3")
    assert Augment.parse("flip+shift:2") is Augment.parse("flip+shift:2")


def test_the_architecture_table_is_current():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "architecture.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_every_module_says_what_it_is_for():
    missing = [m for m, path in ARCH["modules"]().items() if not ARCH["job"](path)]
    assert not missing
