"""The public API and the tree's own descriptions: `tf_ntk.__all__` resolves and is what the README
teaches, `import tf_ntk` stays free of TensorFlow, the moved modules keep their old names, each
folder's docstring and the README's layout table name exactly the modules that exist, and every
public function of the exported modules is annotated (what mypy checks in `make test`)."""

import ast
import importlib
import os
import re
import subprocess
import sys
import tomllib
import types

import tf_ntk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "tf_ntk")


def _readme():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        return f.read()


def _modules(folder):
    """Module names (without .py) of a package folder, __init__ excluded."""
    return sorted(f[:-3] for f in os.listdir(os.path.join(PACKAGE, folder))
                  if f.endswith(".py") and f != "__init__.py")


def test_import_costs_no_tensorflow():
    code = "import sys, tf_ntk; print(tf_ntk.__version__, 'tensorflow' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == [tf_ntk.__version__, "False", "False"]


def test_every_export_resolves():
    for name in tf_ntk.__all__:
        value = getattr(tf_ntk, name)
        if isinstance(value, types.ModuleType):
            assert value.__name__ == f"tf_ntk.{name}"
        else:
            assert callable(value), name
    assert set(tf_ntk.__all__) <= set(dir(tf_ntk))


def test_moved_modules_keep_their_old_names():
    for old, new in tf_ntk._MOVED.items():  # noqa: SLF001 - the table under test
        assert getattr(tf_ntk, old) is importlib.import_module(f"tf_ntk.{new}"), old
    from tf_ntk import robustness  # noqa: PLC0415 - the old spelling, on purpose
    assert robustness is tf_ntk.robust.ensembles


def test_the_readmes_imports_name_the_public_api():
    readme = _readme()
    lines = re.findall(r"^(from tf_ntk(?:\.\w+)* import [\w, ]+|import tf_ntk\S*)$", readme, flags=re.M)
    assert len(lines) >= 3
    namespace = {}
    for line in lines:
        exec(line, namespace)
        if line.startswith("from tf_ntk import "):
            names = [n.strip() for n in line.split(" import ")[1].split(",")]
            assert set(names) <= set(tf_ntk.__all__), f"the README imports {names} beyond __all__"
    taught = set(re.findall(r"\btf_ntk\.([A-Za-z_]\w*)\b", readme)) - {"cli"}
    unknown = {n for n in taught if n not in tf_ntk.__all__ and n not in tf_ntk._MOVED  # noqa: SLF001
               and not n.startswith("__")}
    assert not unknown, f"the README names tf_ntk.{sorted(unknown)}, which is not exported"


def test_each_folders_docstring_names_exactly_its_modules():
    for folder in ("study", "robust", "ntk"):
        doc = importlib.import_module(f"tf_ntk.{folder}").__doc__
        listed = sorted(re.findall(r"^  ([a-z_]+) ", doc, flags=re.M))
        assert listed == _modules(folder), folder


def test_the_layout_table_names_every_module():
    readme = _readme()
    table = readme[readme.index("## Layout"):readme.index("## Installing")]
    cells = " ".join(re.findall(r"^\| ([^|]+) \|", table, flags=re.M))
    for dirpath, _, files in os.walk(PACKAGE):
        if "__pycache__" in dirpath or dirpath.endswith("cli"):
            continue
        folder = os.path.relpath(dirpath, ROOT)
        for f in files:
            if not f.endswith(".py") or (f == "__init__.py" and folder != "tf_ntk"):
                continue
            short = os.path.join(os.path.relpath(dirpath, PACKAGE), f).lstrip("./")
            assert f"`{os.path.join(folder, f)}`" in cells or f"`{short}`" in cells or f"`{f}`" in cells, \
                f"the README's layout table does not name {os.path.join(folder, f)}"


# The exported surface: every module of tf_ntk but the commands (tf_ntk/cli/), the package
# __init__ files (lazy exports) and the kernel engine's internals.
INTERNAL = ("ntk/cost.py", "ntk/jacobian.py", "ntk/keras_graph.py", "ntk/ntvp.py", "ntk/oracle.py",
            "ntk/structured.py")


def _exported_modules():
    """Paths (relative to tf_ntk/, with "/") of the modules whose public functions must be annotated."""
    found = []
    for dirpath, _, files in os.walk(PACKAGE):
        folder = os.path.relpath(dirpath, PACKAGE).replace(os.sep, "/")
        if "__pycache__" in dirpath or folder.split("/")[0] == "cli":
            continue
        for f in files:
            path = f if folder == "." else f"{folder}/{f}"
            if f.endswith(".py") and f != "__init__.py" and path not in INTERNAL:
                found.append(path)
    return sorted(found)


def _unannotated(source):
    """[(line, name, what is missing)] of the public functions and methods in ``source`` (names
    without a leading underscore, and ``__init__``; methods of public classes) that lack an
    annotation on a parameter (self and cls aside) or on the return."""
    out = []

    def visit(body, prefix):
        for node in body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
                    not node.name.startswith("_") or node.name == "__init__"):
                a = node.args
                params = a.posonlyargs + a.args + a.kwonlyargs + [p for p in (a.vararg, a.kwarg) if p]
                missing = [p.arg for p in params if p.annotation is None and p.arg not in ("self", "cls")]
                missing += ["return"] if node.returns is None else []
                if missing:
                    out.append((node.lineno, prefix + node.name, ", ".join(missing)))

    visit(ast.parse(source).body, "")
    return out


def test_the_exported_surface_is_annotated():
    missing = []
    for path in _exported_modules():
        with open(os.path.join(PACKAGE, path), encoding="utf-8") as f:
            missing += [f"tf_ntk/{path}:{line} {name}: {what}" for line, name, what in _unannotated(f.read())]
    assert not missing, "public functions without annotations:\n" + "\n".join(missing)


def test_the_annotation_check_finds_what_is_missing():
    source = (
        "def f(x, *args: int, y: int = 0, **kw):\n    pass\n"
        "def g(a: int) -> None:\n    pass\n"
        "def _private(b):\n    pass\n"
        "class C:\n"
        "    def __init__(self, c):\n        pass\n"
        "    @classmethod\n    def make(cls) -> 'C':\n        return cls(0)\n"
        "    def m(self, d: int):\n        pass\n"
        "class _Hidden:\n    def m(self, e):\n        pass\n"
    )
    assert _unannotated(source) == [(1, "f", "x, kw, return"), (8, "C.__init__", "c, return"),
                                    (13, "C.m", "return")]


def test_mypy_holds_every_exported_module_to_full_annotations():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        config = tomllib.load(f)["tool"]["mypy"]
    strict = [o["module"] for o in config["overrides"]
              if o.get("disallow_untyped_defs") and o.get("disallow_incomplete_defs")]
    patterns = [m for group in strict for m in ([group] if isinstance(group, str) else group)]
    for path in _exported_modules():
        module = "tf_ntk." + path[:-len(".py")].replace("/", ".")
        assert any(module == p or (p.endswith(".*") and module.startswith(p[:-1])) for p in patterns), (
            f"{module} is exported but pyproject.toml's [[tool.mypy.overrides]] does not hold it to "
            "disallow_untyped_defs and disallow_incomplete_defs")
