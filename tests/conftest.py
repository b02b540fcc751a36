"""Test set-up: quiet, deterministic TensorFlow on the CPU, repository root importable."""

import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras
import pytest
import tensorflow as tf

# Two logical CPU devices, so MirroredStrategy can be tested against a single device. Must run
# before TensorFlow initialises its devices; ops without a strategy still run on CPU:0.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    yield


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """`--dist loadgroup` with pytest 9: pytest-xdist 3.8 tags a grouped test by assigning
    ``item._nodeid``, which pytest 9 no longer reads (node ids live in ``item._id``), so its groups
    were ignored and session fixtures such as the smoke sweep ran on both workers. Tag ``_id``'s
    string the way xdist means to (``nodeid@group``) on the workers."""
    if not (hasattr(config, "workerinput") and getattr(config.option, "loadgroup", False)):
        return
    for item in items:
        names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                        for m in item.iter_markers("xdist_group")})
        node_id = getattr(item, "_id", None)  # pytest 9 keeps the node id here
        if not names or node_id is None or "@" in str(node_id):
            continue
        tagged = dataclasses.replace(node_id)
        object.__setattr__(tagged, "_str_cache", f"{node_id}@{'_'.join(names)}")
        item._id = tagged  # noqa: SLF001  (pytest-xdist does the same with the old attribute)
