"""Keeps BUILD honest: every module, binary, test and benchmark has a target whose srcs exist and whose
deps name exactly what its file imports (project modules and third-party packages)."""

import ast
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("tf_ntk", "binaries", "tests", "bench")
# Third-party import name -> the pip requirement BUILD names.
REQUIREMENTS = {
    "absl": "absl-py",
    "art": "adversarial-robustness-toolbox",
    "cleverhans": "cleverhans",
    "keras": "keras",
    "matplotlib": "matplotlib",
    "numpy": "numpy",
    "packaging": "packaging",
    "psutil": "psutil",
    "pytest": "pytest",
    "ray": "ray",
    "scipy": "scipy",
    "sklearn": "scikit-learn",
    "tensorboard": "tensorboard",
    "tensorflow": "tensorflow",
    "tensorflow_datasets": "tensorflow-datasets",
}


def _parse_build():
    targets = {}

    def rule(kind):
        def add(name, srcs=(), deps=(), **kwargs):
            assert name not in targets, f"duplicate target {name}"
            targets[name] = {"kind": kind, "srcs": list(srcs), "deps": list(deps), **kwargs}

        return add

    namespace = {
        "load": lambda *args, **kwargs: None,
        "package": lambda **kwargs: None,
        "requirement": lambda name: f"@pip//{name}",
        "py_library": rule("py_library"),
        "py_binary": rule("py_binary"),
        "py_test": rule("py_test"),
    }
    with open(os.path.join(ROOT, "BUILD"), encoding="utf-8") as f:
        exec(compile(f.read(), "BUILD", "exec"), namespace)  # pylint: disable=exec-used
    return targets


def _python_files():
    out = []
    for package in PACKAGES:
        for dirpath, _, files in os.walk(os.path.join(ROOT, package)):
            if "__pycache__" in dirpath:
                continue
            out += [os.path.relpath(os.path.join(dirpath, f), ROOT) for f in files if f.endswith(".py")]
    return sorted(out)


def _module_file(name):
    """The file of a project module or package (its __init__.py) named ``name``, or None."""
    base = name.replace(".", "/")
    for candidate in (base + ".py", base + "/__init__.py"):
        if os.path.exists(os.path.join(ROOT, candidate)):
            return candidate
    return None


def _imports(path):
    """(project module paths, third-party requirement names) imported by ``path``."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    project, external = set(), set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from M import a`` names the module or package M.a when there is one (``from tf_ntk
            # import data`` names tf_ntk/data.py, ``from tf_ntk import ntk`` the package
            # tf_ntk/ntk/__init__.py), else the attribute a of M (``from tf_ntk.ntk import
            # empirical_ntk`` names tf_ntk/ntk/__init__.py).
            inner = [f"{node.module}.{a.name}" for a in node.names]
            names = [n for n in inner if _module_file(n)]
            if len(names) < len(inner):
                names.append(node.module)
        for name in names:
            top = name.split(".")[0]
            if top in PACKAGES:
                if _module_file(name):
                    project.add(_module_file(name))
            elif top in REQUIREMENTS:
                external.add(REQUIREMENTS[top])
            elif top not in sys.stdlib_module_names:
                raise AssertionError(f"{path} imports {top!r}, which REQUIREMENTS does not map")
    return project, external


TARGETS = _parse_build()
SRC_TO_TARGET = {src: name for name, t in TARGETS.items() for src in t["srcs"]}


def test_every_python_file_has_exactly_one_target():
    files = _python_files()
    missing = [f for f in files if f not in SRC_TO_TARGET]
    assert not missing, f"files without a BUILD target: {missing}"
    all_srcs = [s for t in TARGETS.values() for s in t["srcs"]]
    assert len(all_srcs) == len(set(all_srcs)), "a file is in two targets"


def test_every_src_exists_and_kinds_fit():
    for name, target in TARGETS.items():
        assert target["srcs"], f"{name} has no srcs"
        for src in target["srcs"]:
            assert os.path.isfile(os.path.join(ROOT, src)), f"{name}: {src} does not exist"
        if target["kind"] == "py_test":
            assert all(os.path.basename(s).startswith("test_") for s in target["srcs"]), name
        if target["kind"] == "py_binary":
            assert target.get("main") in target["srcs"], f"{name}: main must be one of its srcs"
    for path in _python_files():
        if os.path.basename(path).startswith("test_"):
            assert TARGETS[SRC_TO_TARGET[path]]["kind"] == "py_test", f"{path} is not a py_test"


@pytest.mark.parametrize("path", _python_files())
def test_deps_name_exactly_what_the_file_imports(path):
    target = TARGETS[SRC_TO_TARGET[path]]
    project, external = _imports(path)
    want = {f":{SRC_TO_TARGET[p]}" for p in project if SRC_TO_TARGET[p] != SRC_TO_TARGET[path]}
    want |= {f"@pip//{r}" for r in external}
    # A target with several srcs needs the union of their imports.
    union = set()
    for src in target["srcs"]:
        p, e = _imports(src)
        union |= {f":{SRC_TO_TARGET[q]}" for q in p if SRC_TO_TARGET[q] != SRC_TO_TARGET[path]}
        union |= {f"@pip//{r}" for r in e}
    deps = set(target["deps"])
    assert want <= deps, f"{path}: BUILD deps lack {sorted(want - deps)}"
    assert deps <= union, f"{SRC_TO_TARGET[path]}: BUILD deps name unused {sorted(deps - union)}"
    for dep in deps:
        if dep.startswith(":"):
            assert dep[1:] in TARGETS, f"{path}: unknown target {dep}"
            assert TARGETS[dep[1:]]["kind"] != "py_test", f"{path}: depends on a test target {dep}"
