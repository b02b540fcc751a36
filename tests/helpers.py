"""Shared test utilities."""

import numpy as np


def randomize_bn_statistics(model, seed=0):
    """Sets every BN moving mean to N(0, 0.1²) and moving variance to U(0.5, 1.5), so that inference-mode
    BN differs from an identity and from batch statistics."""
    rng = np.random.default_rng(seed)
    for v in model.non_trainable_variables:
        if "moving_mean" in v.path:
            v.assign(rng.normal(0.0, 0.1, v.shape).astype(v.dtype))
        elif "moving_variance" in v.path:
            v.assign(rng.uniform(0.5, 1.5, v.shape).astype(v.dtype))


def relative_error(a, b):
    """Normwise relative error ‖a − b‖ / ‖b‖."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))
