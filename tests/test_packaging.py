"""setup.py declares compatible ranges; constraints.txt pins the tested environment inside them."""

import ast
import os
import re

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import tf_ntk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup_lists():
    """INSTALL_REQUIRES and EXTRAS_REQUIRE of setup.py, read without running it."""
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and node.targets[0].id in ("INSTALL_REQUIRES", "EXTRAS_REQUIRE"):
            found[node.targets[0].id] = ast.literal_eval(node.value)
    return found["INSTALL_REQUIRES"], found["EXTRAS_REQUIRE"]


def _constraints():
    pins = {}
    with open(os.path.join(ROOT, "constraints.txt"), encoding="utf-8") as f:
        for line in f:
            line = line.split("#")[0].strip()
            if line:
                name, version = line.split("==")
                pins[canonicalize_name(name)] = version
    return pins


def test_constraints_pin_every_requirement_inside_its_declared_range():
    install, extras = _setup_lists()
    pins = _constraints()
    for text in install + [r for group in extras.values() for r in group]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]}, outside setup.py's {req.specifier}")


def test_ranges_not_pins_for_the_library():
    install, _ = _setup_lists()
    for text in install:
        specifier = Requirement(text).specifier
        assert not any(s.operator == "==" for s in specifier), f"{text}: an exact pin in install_requires"
        assert any(s.operator == ">=" for s in specifier) and any(s.operator == "<" for s in specifier), text


def test_the_version_has_one_source():
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
        assert not re.search(r"version=\"", f.read())  # setup.py reads tf_ntk/__init__.py
    assert re.fullmatch(r"\d+\.\d+\.\d+", tf_ntk.__version__)
