"""tools/fit_ask_confidence.py replays ask.decide on dumped windows: the first window whose
confidence reaches the threshold is answered, a question with none is declined."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
from conftest import REPO


def load_tool():
    sys.path.insert(0, str(REPO / "tools"))  # it imports fit_sentence_ranker beside it, as a script does
    try:
        spec = importlib.util.spec_from_file_location("fit_ask_confidence", REPO / "tools" / "fit_ask_confidence.py")
        tool = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tool)
        return tool
    finally:
        sys.path.remove(str(REPO / "tools"))


def test_simulate_answers_the_first_confident_window_and_windows_label_them():
    tool = load_tool()
    sure, doubtful = [1.0, 0, 0, 0, 0, 0], [0.0, 0, 0, 0, 0, 0]  # weight 4 on the first feature, intercept -2
    w = np.array([4.0, 0, 0, 0, 0, 0, -2.0])

    def window(features, extract):
        return {"features": features, "grounded": True, "extract": extract, "declined": False}

    rows = [{"answers": ["Paris"], "windows": {
                "hasans": [window(doubtful, "Lyon"), window(sure, "Paris")],
                "noans": [window(doubtful, "Lyon")],
                "other": [{"features": doubtful, "grounded": False, "extract": "", "declined": True}]}},
            {"answers": ["1912"], "windows": {"hasans": [window(doubtful, "1912")], "noans": [window(sure, "1913")],
                                              "other": []}}]
    r = tool.simulate(rows, w, 0.5)
    # question 1: the second window (sigmoid 2 = 0.88) is answered, right; question 2: no window reaches
    # 0.5 (sigmoid -2 = 0.12), so declined, F1 0; its NoAns answer is confident, so not declined
    assert (r["hasans_f1"], r["noans_declined"], r["other_article_declined"]) == (0.5, 0.5, 1.0)
    assert tool.simulate(rows, w, 0.05)["hasans_f1"] == 0.5  # question 1 now answers "Lyon", question 2 "1912"
    x, y = tool.windows(rows)
    assert x.shape == (5, 6) and y.tolist() == [0.0, 1.0, 0.0, 1.0, 0.0]  # grounded windows; right only for HasAns
