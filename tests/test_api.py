"""The public API and the tree's own descriptions: `tf_ntk.__all__` resolves and is what the README
teaches, `import tf_ntk` stays free of TensorFlow, the moved modules keep their old names, and each
folder's docstring and the README's layout table name exactly the modules that exist."""

import importlib
import os
import re
import subprocess
import sys
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
