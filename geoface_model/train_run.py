"""The `train` stage's work (also `geoface train`): train in a resumable run folder, then publish the EMA model.

Training state (checkpoints every `train.checkpoint_every` steps) lives in STATE/<run id>/: a killed run resumes
from its latest valid checkpoint when called again with the same config and dataset. The run id is a hash of the
config (every key but `train.keep_states`) and the dataset's shards (metadata and content), so other params or
data start a new run beside the earlier ones, which stay resumable: each start stamps its run as used and the
`train.keep_states` most recently used runs are kept, older ones deleted (only folders a run wrote). The config, the
dataset and the output paths are checked first (`check_file_outputs`, `check_start`), so a run that cannot start
leaves STATE exactly as it was: no new run folder, no run pruned. Publishes MODEL/ (EMA weights,
`GeoFaceTransformer.from_pretrained`, with geoface_config.json beside them, which generation needs, and the model
card: geoface_model/lineage.py) and the loss curve CSV (diffusion and alignment loss per step). A finished run
keeps what it published (STATE/<run id>/published/: the card, the config, the metrics); called again with nothing
left to train (another `train.keep_states`, a forced stage, an unrelated change upstream that leaves the shards as
they were) it publishes those same bytes, not a new card dated now with metrics of a resume that trained nothing
(models/geoface and metrics/train.json changed, and the evaluation re-ran in full).
A second training of the same run while one trains (a second terminal, a resume started too early) refuses to start
(run_lock.py): both wrote the one temporary checkpoint folder of the run, and one of them died mid-run.
Several processes (GPUs): the main one alone locks, prunes and publishes; when it (or any process) cannot start or
publish, every process stops with one line naming it (ranks.py), instead of waiting at a barrier for it.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, Iterator

from accelerate import PartialState

from flame_fitting.core.errors import GeofaceError
from flame_fitting.core.names import terminal_safe
from flame_fitting.core.fileio import file_ancestor, replace_dir, sha256_file, temp_path, write_bytes, write_json
from flame_fitting.core.json_files import read_json_object
from flame_fitting.core.unit_keys import code_digest, tree_digest

from .backbone import vae_path_of
from .checkpoint import list_checkpoints, prune_runs, touch_run, writing
from .config import GeoFaceConfig
from .data import GeoFaceDataset, ShardError, check_compatible, read_shard_meta
from .latents import latent_shape_info
from .lineage import CARD_JSON, CARD_MD, MAX_CARD_BYTES, model_card, scalar_entries, write_model_card
from .ranks import stop_together
from .run_lock import run_lock
from .train import train


class TrainError(GeofaceError, ValueError):
    """A training run that cannot start: an output path that cannot be written."""


class TrainInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, flame_fitting/core/interrupt.py) during `train_model` once its run folder was known:
    `checkpoint` = (step, folder) of the newest checkpoint written (what the same training resumes from), or None;
    `every` = train.checkpoint_every."""

    def __init__(self, checkpoint: tuple[int, Path] | None, every: int):
        super().__init__()
        self.checkpoint, self.every = checkpoint, every

    def again(self, what: str) -> str:
        """What `what` (`running the same command`) does now, one clause."""
        if self.checkpoint is None:
            return (f"no checkpoint was written yet (one every train.checkpoint_every = {self.every} steps): {what} "
                    "again starts over")
        step, path = self.checkpoint
        return f"{what} again resumes from the checkpoint of step {step} ({path})"


PUBLISHED, METRICS_JSON = "published", "metrics.json"  # STATE/<run id>/published/: what the finished run published


def same_lineage(old: dict, new: dict) -> bool:
    """Two model cards of one run that differ only in when and from which commit they were written, their metrics
    and `train.keep_states` (bookkeeping, not part of the run): the dataset, its capture and head model, the params."""
    def key(card: dict) -> dict:
        c = {k: v for k, v in card.items() if k not in ("git", "date", "metrics")}
        c["params"] = {**c.get("params", {}), "train": {k: v for k, v in c.get("params", {}).get("train", {}).items()
                                                        if k != "keep_states"}}
        return c
    return json.dumps(key(old), sort_keys=True, default=str) == json.dumps(key(new), sort_keys=True, default=str)


def check_start(cfg: GeoFaceConfig, data: Path | str) -> None:
    """Refuse, before the run folder is created or any run pruned, what `train` would refuse first: an invalid
    config, no training shard, shards of other token grids or with too few views or samples, a missing VAE."""
    cfg.validate()
    tc = cfg.train
    dataset = GeoFaceDataset(data, "train", tc.n_ref, tc.n_tgt, tc.seed)
    check_compatible(dataset.meta, cfg.tokens, str(data))
    if len(dataset) // tc.batch_size < tc.grad_accum:  # train's own check, for one process
        raise ShardError(f"{data}: {len(dataset)} samples give {len(dataset) // tc.batch_size} batches of "
                         f"train.batch_size = {tc.batch_size}, fewer than train.grad_accum = {tc.grad_accum} (lower "
                         "train.batch_size or train.grad_accum, or add training samples)")
    latent_shape_info(vae_path_of(cfg))  # the VAE folder's config (sd21_mv: the base folder) without loading it


def config_warnings(cfg: GeoFaceConfig, latent: tuple[int, int] | None) -> list[str]:
    """What a run of `cfg` can do but most likely should not, one line each; printed by `check_params` and when
    `train_model` starts, never refused (small test configs use them):
    - model.width below the latent values per patch of a stream (backbone dit): a token's prediction is a linear map
      of its width-D state to channels·p² values (`model.FinalLayer`), so it spans at most D of them and no
      prediction can reproduce an arbitrary patch. p = tokens.patch_size (appearance) or geo_patch_size (geometry)
      over the codec's downsampling; `latent` = the codec's (channels, downsampling): (3, 1) in pixel space, the
      VAE's latent_channels and 2^(blocks - 1) (`latents.latent_shape_info`); None = not known, not checked;
    - train.log_every ≥ train.steps > 1: the loss curve gets one row, the last step's (loss_first = loss_last)."""
    out, m, t, tc = [], cfg.model, cfg.tokens, cfg.train
    if latent is not None and m.backbone == "dit":
        channels, f = latent
        streams = [("tokens.patch_size", t.patch_size)]
        if m.geometry_stream:
            streams.append(("tokens.geo_patch_size", t.geo_patch_size))
        for key, patch in streams:
            if patch % f == 0 and m.width < (n := channels * (patch // f) ** 2):
                out.append(f"model.width = {m.width} is below the {n} latent values of a token's patch ({key} "
                           f"= {patch}: {channels} channels × {patch // f}² at {f}× downsampling): its prediction "
                           f"spans at most {m.width} of them (use a width of at least {n})")
    if tc.log_every >= tc.steps > 1:
        out.append(f"train.log_every = {tc.log_every} is not below train.steps = {tc.steps}: the loss curve gets one "
                   f"row (step {tc.steps}) and loss_first = loss_last (use a log_every below {tc.steps})")
    return out


def check_file_outputs(model: Path, files: dict[str, Path | str | None]) -> None:
    """Refuse file outputs ({what: path}) that are an existing folder, the model folder or under a file, before any
    work: otherwise they fail only after training, with the model already published."""
    for what, f in files.items():
        if f is None:
            continue
        f = Path(f)
        if f.resolve() == model.resolve():
            raise TrainError(f"{f}: is the model folder; the {what} must be another path, a file")
        if f.is_dir():
            raise TrainError(f"{f}: is a folder; the {what} must be the path of a file")
        if (parent := file_ancestor(f)) is not None:
            raise TrainError(f"{f}: {parent} is a file, not a folder; the {what} cannot be written there")


# the code a training run's result depends on (geoface_model imports these parts of flame_fitting); code_digest adds
# the libraries' versions
TRAIN_CODE = (Path(__file__).resolve().parent, *(Path(__file__).resolve().parents[1] / "flame_fitting" / r
                                                 for r in ("__init__.py", "core", "geometry", "formats")))


def run_id(cfg: GeoFaceConfig, data: Path | str) -> str:
    """Hash of the config, the dataset's content, the training code (geoface_model, the flame_fitting parts it
    uses, the versions of the libraries it computes with) and the content of the weight folders the config names
    (`model.base_path`, `model.vae_path`: replacing the weights behind the same path is another run): resume only a
    run of the same config on the same data with the same code and weights. `train.keep_states` (how many runs to
    keep) is bookkeeping, not part of the run. (Without the code, an edited loss re-ran the stage, which resumed the
    finished run of the old code at its last step and published the old weights beside the new code's lineage.)"""
    shards = sorted(Path(data).glob("**/*.safetensors"))
    metas = [read_shard_meta(p).to_json() for p in shards]
    contents = [sha256_file(p) for p in shards]
    config = cfg.to_dict()
    config["train"].pop("keep_states")
    weights = {k: tree_digest(v) for k, v in (("base_path", cfg.model.base_path), ("vae_path", cfg.model.vae_path))
               if v is not None and Path(v).is_dir()}
    blob = json.dumps({"config": config, "shards": metas, "sha256": contents, "code": code_digest(*TRAIN_CODE),
                       **({"weights": weights} if weights else {})}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _published_record(record: Path) -> tuple[dict, dict] | None:
    """The card and metrics a finished run published (`record`), or None when there is none or it is unreadable
    (then the run publishes afresh and writes the record again, with a warning naming the file)."""
    if not (record / METRICS_JSON).is_file():
        return None
    out = []
    for f in (record / CARD_JSON, record / METRICS_JSON):
        try:
            out.append(read_json_object(f, ValueError, MAX_CARD_BYTES, "published record"))
        except ValueError as e:  # not JSON, nested too deeply, too large, not an object: the message names the file
            sys.stderr.write(terminal_safe(f"train: {e}; publishing the finished run afresh") + "\n")
            return None
    return out[0], out[1]


def _publish(cfg: GeoFaceConfig, data: Path | str, rid: str, run_dir: Path, model: Path, tmp: Path,
             metrics: dict) -> dict:
    """Write the model folder into `tmp`, then rename it to `model`; returns the metrics published."""
    shutil.copytree(run_dir / "model", tmp)
    record = run_dir / PUBLISHED
    old = _published_record(record) if metrics.get("steps_run") == 0 else None
    if old is not None and same_lineage(old[0], model_card(data, cfg.to_dict(), rid)):
        # the run had finished: publish the same bytes as when it did (its card's date and commit, its metrics),
        # so a no-op re-run changes no DVC output and re-runs no evaluation
        for name in (CARD_JSON, CARD_MD, "geoface_config.json"):
            shutil.copyfile(record / name, tmp / name)
        metrics = old[1]
    else:
        shutil.copyfile(run_dir / "geoface_config.json", tmp / "geoface_config.json")  # generation needs it
        metrics["captures_version"] = write_model_card(tmp, data, cfg.to_dict(), rid, metrics)["captures_version"]
        if metrics.get("completed"):
            keep = temp_path(record)
            with writing(keep, record):
                keep.mkdir(parents=True)
                for name in (CARD_JSON, CARD_MD, "geoface_config.json"):
                    shutil.copyfile(tmp / name, keep / name)
                write_json(keep / METRICS_JSON, metrics)
                replace_dir(keep, record, kind="published model record")
    replace_dir(tmp, model, kind="model")
    return metrics


@contextmanager
def _interrupted(run_dir: Callable[[], Path | None], every: int) -> Iterator[None]:
    """Ctrl-C / SIGTERM in the block: TrainInterrupted naming the newest checkpoint of `run_dir()` once it is known
    (before, the plain KeyboardInterrupt: no run folder yet)."""
    try:
        yield
    except KeyboardInterrupt as e:
        if run_dir() is None or isinstance(e, TrainInterrupted):
            raise
        raise TrainInterrupted(next(iter(list_checkpoints(run_dir())), None), every) from e


def train_model(cfg: GeoFaceConfig, data: Path | str, state: Path | str, model: Path | str, loss_csv: Path | str,
                metrics_path: Path | str | None = None) -> dict:
    """Train on the shards under `data` in `state`/<run id>, publish `model` and `loss_csv`; returns the metrics
    (and writes their scalar entries to `metrics_path`)."""
    state, model, loss_csv = Path(state), Path(model), Path(loss_csv)
    main, run_dir = PartialState().is_main_process, None
    with _interrupted(lambda: run_dir, cfg.train.checkpoint_every), ExitStack() as held:
        # an error of any process (the main one alone takes the lock, prunes, publishes) stops every process (ranks.py)
        with stop_together("could not start"):
            check_file_outputs(model, {"loss CSV": loss_csv, "metrics JSON": metrics_path})
            check_start(cfg, data)  # before touching STATE: a run that cannot start changes nothing there
            rid = run_id(cfg, data)
            run_dir = state / rid
        with stop_together("could not start"):  # after every process checked: one that cannot start changes nothing
            if main:
                held.enter_context(run_lock(run_dir))  # one training at a time in a run folder (run_lock.py)
                for warning in config_warnings(cfg, latent_shape_info(vae_path_of(cfg))):
                    sys.stderr.write(f"train: warning: {warning}\n")  # one write: a signal cannot cut the line
                touch_run(run_dir, rid)
                for old in prune_runs(state, cfg.train.keep_states, run_dir):
                    sys.stderr.write(f"train: deleted the state of run {old.name} (train.keep_states = "
                                     f"{cfg.train.keep_states})\n")
        metrics = train(cfg, Path(data), run_dir)
        with stop_together("could not publish the model"):
            if main:  # one process publishes (several GPUs: the others would race its renames)
                tmp = temp_path(model)
                with writing(tmp, model):  # a full disk or an interrupt leaves no half-written copy beside MODEL
                    metrics = _publish(cfg, data, rid, run_dir, model, tmp, metrics)
                write_bytes(loss_csv, (run_dir / "loss.csv").read_bytes())
                if metrics_path is not None:
                    write_json(metrics_path, scalar_entries(metrics))
    return metrics
