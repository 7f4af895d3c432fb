"""Reading an evaluation summary (metrics/eval.json, `evaluate.aggregate`) for people: a metric that exists only
for some samples (the landmark fit needs MediaPipe to find faces in two generated views, the mesh alignment in
one) is the mean over those, and `aggregate` writes how many beside it (`<key>_n`). A table that shows the mean
must show that count too, or a variant that found a face in 3 of 18 samples reads better than one that found it
in 9 (the HTML report's metric table, the ablation tables). Light on purpose: the ablation CLI imports it."""
from __future__ import annotations


def with_count(summary: dict, key: str):
    """The value of `key` in `summary`, as text with the number of samples it is the mean of when that is fewer
    than all (`<key>_n`, written by `evaluate.aggregate`: e.g. the landmark fit exists only for samples where
    MediaPipe found faces): "6.672 (n 3 of 18)". The value itself (None, a number) when it covers every sample."""
    v, n = summary.get(key), summary.get(f"{key}_n")
    if n is None:
        return v
    if v is None:  # defined for no sample (e.g. MediaPipe found no face in any generated view)
        return f"— (n 0 of {summary.get('n_samples', '?')})"
    return f"{f'{v:.4g}' if isinstance(v, float) else v} (n {n} of {summary.get('n_samples', '?')})"
