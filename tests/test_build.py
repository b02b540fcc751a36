"""Keeps BUILD honest: it is what `make build-file` writes (tools/build_file.py), every module, binary,
test and benchmark has a target whose srcs exist, and its deps name exactly what its file imports."""

import os

import pytest

from tools import build_file

ROOT = build_file.ROOT


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
    return build_file.python_files()


def _imports(path):
    return build_file.imports(path)


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


def test_build_is_what_the_generator_writes():
    with open(os.path.join(ROOT, "BUILD"), encoding="utf-8") as f:
        assert f.read() == build_file.generate(), "BUILD is stale: run `make build-file`"


def test_generator_names_each_file_once_and_refuses_an_unmapped_package(tmp_path):
    (tmp_path / "tf_ntk").mkdir()
    (tmp_path / "tf_ntk" / "__init__.py").write_text("from tf_ntk import a\n")
    (tmp_path / "tf_ntk" / "a.py").write_text("import os\nimport numpy as np\nfrom tf_ntk import b\n")
    (tmp_path / "tf_ntk" / "b.py").write_text("")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text("from tf_ntk.a import np\nimport pytest\n")
    text = build_file.generate(str(tmp_path))
    assert text.count("py_library(") == 3 and text.count("py_test(") == 1
    a = text[text.index('name = "tf_ntk/a"'):]
    a = a[:a.index("\n)")]
    assert '":tf_ntk/b"' in a and 'requirement("numpy")' in a and a.count("requirement") == 1
    test = text[text.index('name = "tests/test_a"'):]
    assert '":tf_ntk/a"' in test and 'requirement("pytest")' in test and 'size = "medium"' in test
    (tmp_path / "tf_ntk" / "b.py").write_text("import leftpad\n")
    with pytest.raises(ValueError, match="leftpad"):
        build_file.generate(str(tmp_path))
