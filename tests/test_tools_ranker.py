"""tools/fit_sentence_ranker.py's logistic regression recovers the weights that generated its data."""

from __future__ import annotations

import importlib.util

import numpy as np
from conftest import REPO


def test_fit_logistic_recovers_known_weights():
    spec = importlib.util.spec_from_file_location("fit_sentence_ranker", REPO / "tools" / "fit_sentence_ranker.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 3))
    true = np.array([1.5, -2.0, 0.5, -1.0])  # three weights and the intercept
    y = (rng.random(len(x)) < 1 / (1 + np.exp(-(x @ true[:3] + true[3])))).astype(np.float64)
    w = tool.fit_logistic(x, y, l2=1e-3)
    assert np.abs(w - true).max() < 0.1
    held = [{"x": np.eye(3), "y": np.array([0.0, 1.0, 0.0])}, {"x": None}]
    assert tool.coverage(held, lambda q: (q["x"] @ np.array([0.0, 1.0, 0.0]), np.ones(3, bool)), ks=(1,)) == {1: 0.5}
