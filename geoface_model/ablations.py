"""The three ablation variants (full; no alignment loss; no geometry stream), trained and evaluated with
`dvc exp run`, and their comparison table (`make ablations`).

    python -m geoface_model.ablations run     # one `dvc exp run --temp` per variant (train + evaluate each)
    python -m geoface_model.ablations table [--commit REV]   # `dvc exp show --json` -> docs/ablations.md
    python -m geoface_model.ablations run --preset learn --jobs 2   # the README's learn preset, 2 at a time
    python -m geoface_model.ablations table --preset learn           # -> docs/ablations_learn.md

Each variant is an experiment named `ablation-<variant>-<commit>`, run in a temporary copy of the
workspace (`--temp`), so the workspace, its params.yaml and its outputs are left as they are; an experiment of
the same name from an earlier run on the same commit is replaced. Every variant
keeps every other parameter of params.yaml; the table records the commit and the settings it came from.

`--preset NAME` adds the preset's settings (`PRESETS`; `learn` = the README's learn preset) to every variant and
names its experiments `ablation-NAME-<variant>-<commit>`. `--jobs N` (N > 1) queues the variants and runs N at a
time with DVC's own queue (`dvc queue start -j N`), each with cpu_count / N torch threads (OMP_NUM_THREADS, unless
set), and waits for them.

The data stages with per-sequence units (landmarks ... dataset) have `persist` outputs, and DVC keeps no run cache
for such stages: where the preset changes the data (`learn`: 40 subjects), every variant's temporary workspace
builds them again (the same bytes: the stages are deterministic). The table records each variant's `data/dataset`
hash and says so if they differ.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

from flame_fitting.core.fileio import write_text

from .dvc_exp import _dvc, _git, exp_show_json, wait
from .summary import with_count

PRESETS: dict[str, list[str]] = {  # settings added to every variant (`--preset`)
    "default": [],
    "learn": ["captures.synthetic.subjects=40", "captures.synthetic.split_fractions=[0.75,0.1,0.15]",
              "train.steps=6000", "train.checkpoint_every=500"],  # README "The learn preset"
}
VARIANTS: dict[str, list[str]] = {
    "full": [],
    "no_align_loss": ["loss.align_weight=0"],
    "no_geometry_stream": ["model.geometry_stream=false"],
}
COLUMNS = [  # (metrics file, key, header)
    ("metrics/eval.json", "psnr", "PSNR ↑"), ("metrics/eval.json", "psnr_fg", "PSNR fg ↑"),
    ("metrics/eval.json", "ssim", "SSIM ↑"), ("metrics/eval.json", "ssim_fg", "SSIM fg ↑"),
    ("metrics/eval.json", "tsed", "TSED ↑"),
    ("metrics/eval.json", "landmark_views_detected", "MediaPipe views found ↑"),
    ("metrics/eval.json", "landmark_fit_rmse_px", "landmark fit px ↓"),
    ("metrics/eval.json", "mesh_alignment_px", "mesh↔view px ↓"),
    ("metrics/eval.json", "geometry_error_mm", "geometry mm ↓"),
    ("metrics/eval.json", "attention_hit_rate", "attention hit ↑"),
    ("metrics/eval.json", "attention_hit_rate_low", "hit low t ↑"),
    ("metrics/eval.json", "attention_hit_rate_mid", "hit mid t ↑"),
    ("metrics/eval.json", "attention_hit_rate_high", "hit high t ↑"),
    ("metrics/eval.json", "attention_chance", "chance"),
    ("metrics/train.json", "diffusion_loss_last", "final diffusion loss ↓"),
    ("metrics/train.json", "align_loss_last", "final alignment loss"),
]
DOC = Path("docs/ablations.md")
# rows under the variants, from the first variant's metrics/eval.json (they do not depend on the model):
# (label, key prefix) -> the value of `<prefix><model key>` in each column
REFERENCE_ROWS = [
    ("ground truth (views / fitted mesh)", "gt_"),
    ("baseline: copy the reference", "baseline_copy_reference_"),
    ("baseline: constant mean training colour", "baseline_mean_colour_"),
    ("baseline: mean training UV map", "baseline_mean_uv_"),
    ("baseline: camera-only attention", "baseline_camera_only_"),
]


def exp_name(variant: str, commit: str, preset: str = "default") -> str:
    tag = "" if preset == "default" else f"{preset}-"
    return f"ablation-{tag}{variant.replace('_', '-')}-{commit[:7]}"


def doc_path(preset: str = "default") -> Path:
    return DOC if preset == "default" else DOC.with_name(f"ablations_{preset}.md")


def _sets(settings: list[str]) -> list[str]:
    return [a for s in settings for a in ("-S", s)]


def run(variants: list[str], preset: str = "default", jobs: int = 1) -> None:
    """Train and evaluate each variant as an experiment of HEAD; `jobs` > 1: that many at a time (DVC's queue)."""
    commit = _git("rev-parse", "HEAD")
    names = {v: exp_name(v, commit, preset) for v in variants}
    for name in names.values():  # replace an earlier run of this commit (none: DVC says so, not an error)
        _dvc("exp", "remove", name, check=False, quiet=True)
    if jobs <= 1:
        for v in variants:
            _dvc("exp", "run", "--temp", "-n", names[v], *_sets(PRESETS[preset] + VARIANTS[v]))
        return
    for v in variants:
        _dvc("exp", "run", "--queue", "-n", names[v], *_sets(PRESETS[preset] + VARIANTS[v]))
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    _dvc("queue", "start", "-j", str(jobs), env=env)
    states = wait(commit, list(names.values()))
    failed = [n for n in names.values() if states.get(n) != "success"]
    if failed:
        raise SystemExit(f"ablation experiment(s) {', '.join(failed)} did not succeed "
                         f"({', '.join(str(states.get(n)) for n in failed)}): see `dvc queue logs NAME`")


def _metric(exp: dict, file: str, key: str):
    """The value of `key` in the experiment's metrics file `file`; for a mean over fewer than all evaluated samples
    (`<key>_n` in metrics/eval.json), the text "value (n k of N)"."""
    data = (exp.get("data") or {}).get("metrics", {})
    for path, content in data.items():
        if path.endswith(file):
            return with_count(content.get("data") or {}, key)
    return None


def collect(commit: str, show: list, preset: str = "default") -> list[tuple[str, dict]]:
    """[(variant, experiment record)] of this commit's ablation experiments in `dvc exp show --json` output."""
    found: dict[str, dict] = {}
    for rev in show:
        for exp in rev.get("experiments") or []:
            for r in exp.get("revs") or []:
                for v in VARIANTS:
                    if r.get("name") == exp_name(v, commit, preset):
                        found[v] = r
    return [(v, found[v]) for v in VARIANTS if v in found]


def _param(exp: dict, dotted: str):
    node = ((exp.get("data") or {}).get("params") or {}).get("params.yaml", {}).get("data", {})
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def dataset_hash(exp: dict) -> str | None:
    """The `data/dataset` hash the experiment trained on (its dvc.lock's dependency)."""
    return (((exp.get("data") or {}).get("deps") or {}).get("data/dataset") or {}).get("hash")


def _fmt(x) -> str:
    if x is None:
        return "—"
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def table(out: Path | None = None, commit: str | None = None, show: list | None = None,
          preset: str = "default") -> str:
    """Write the markdown table of `commit`'s ablation experiments (default: HEAD, `dvc exp show --json`)."""
    commit = commit or _git("rev-parse", "HEAD")
    out = out or doc_path(preset)
    rows = collect(commit, exp_show_json(commit) if show is None else show, preset)
    opt = "" if preset == "default" else f" --preset {preset}"
    if not rows:
        raise SystemExit(f"no ablation experiments{opt} for commit {commit[:7]}: run "
                         f"`python -m geoface_model.ablations run{opt}` first")
    setting = ("params.yaml of that commit" if preset == "default" else
               f"params.yaml of that commit with the `{preset}` preset ("
               + ", ".join(f"`{s}`" for s in PRESETS[preset]) + ")")
    head = "| variant | align_weight | geometry_stream | " + " | ".join(h for _, _, h in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 3)]
    for v, exp in rows:  # the params are read back from each experiment, not assumed
        aligned = bool(_param(exp, "loss.align_weight")) and _param(exp, "model.geometry_stream") is not False
        vals = [None if k == "align_loss_last" and not aligned else _metric(exp, f, k) for f, k, _ in COLUMNS]
        lines.append(f"| {v} | {_fmt(_param(exp, 'loss.align_weight'))} | {_fmt(_param(exp, 'model.geometry_stream'))} | "
                     + " | ".join(_fmt(x) for x in vals) + " |")
    hashes = {v: dataset_hash(exp) for v, exp in rows}
    if None in hashes.values():
        data_line = "(Not every experiment records its `data/dataset` dependency.)"
    elif len(set(hashes.values())) == 1:
        data_line = f"Every variant trained on the same dataset (`data/dataset` {next(iter(hashes.values()))})."
    else:
        data_line = ("**The variants' datasets differ** (`data/dataset`: "
                     + ", ".join(f"{v} {h}" for v, h in hashes.items()) + ").")
    ref = rows[0][1]
    for label, prefix in REFERENCE_ROWS:
        vals = [_metric(ref, f, prefix + k) if f == "metrics/eval.json" else None for f, k, _ in COLUMNS]
        if any(v is not None for v in vals):
            lines.append(f"| {label} | | | " + " | ".join(_fmt(x) for x in vals) + " |")
    md = "\n".join([
        "# Ablations",
        "",
        f"Generated by `python -m geoface_model.ablations table{opt}` on {datetime.date.today().isoformat()} from "
        f"commit `{commit[:12]}` (experiments {', '.join(exp_name(v, commit, preset) for v, _ in rows)}). Produce "
        + ("it with `make ablations`" if preset == "default" else
           f"it with `python -m geoface_model.ablations run{opt} --jobs 2` and `... table{opt}`")
        + f". Every variant is trained and evaluated with the {setting}, except:",
        "",
        *[f"- **{v}**: " + (", ".join(f"`{s}`" for s in VARIANTS[v]) or "params.yaml as committed") for v, _ in rows],
        "",
        "Metrics: `metrics/eval.json` of each experiment (definitions in docs/evaluation.md), held-out subjects. "
        + data_line,
        "",
        *lines,
        "",
        f"The rows under the variants come from `{rows[0][0]}`'s `metrics/eval.json`: the same metrics on the "
        "ground-truth views and of the baselines on the same held-out samples (independent of the model; "
        "definitions in docs/evaluation.md). The camera-only attention baseline sees no noise, so its hit rate is "
        "the same in every band.",
        "",
        ("The default pipeline is a CPU smoke-scale run (a few hundred training steps on a handful of synthetic "
         "subjects). Read the table as what these settings produce, not as the paper's comparison."
         if preset == "default" else
         f"The `{preset}` preset is a CPU-scale run of the tiny model (docs/model.md). Read the table as what these "
         "settings produce, not as the paper's comparison."),
        "",
    ])
    write_text(out, md)
    print(md)
    return md


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m geoface_model.ablations", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the ablation experiments (dvc exp run --temp)")
    r.add_argument("variants", nargs="*", help=f"some of {', '.join(VARIANTS)} (default: all)")
    r.add_argument("--jobs", type=int, default=1, help="experiments run at a time (> 1: DVC's queue, cpu_count / jobs "
                   "torch threads each, waits for them; default 1, one after the other)")
    t = sub.add_parser("table", help=f"write {DOC} (docs/ablations_<preset>.md with --preset) from dvc exp show")
    t.add_argument("--commit", default="HEAD", help="the commit the experiments were run from (default HEAD)")
    for p in (r, t):
        p.add_argument("--preset", default="default", choices=list(PRESETS),
                       help="settings added to every variant: " + "; ".join(
                           f"{k} = {' '.join(v) or 'params.yaml as it is'}" for k, v in PRESETS.items()))
    a = ap.parse_args(argv)
    if a.cmd == "run":
        unknown = [v for v in a.variants if v not in VARIANTS]
        if unknown:
            ap.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
        run(a.variants or list(VARIANTS), a.preset, a.jobs)
    else:
        table(commit=_git("rev-parse", a.commit), preset=a.preset)


if __name__ == "__main__":
    main(sys.argv[1:])
