"""Train the GeoFace transformer with accelerate: `train(cfg, data, out_dir)`.

Single process: call `train(...)` (the `train` DVC stage does). Multi-GPU / multi-node: the same code
under `accelerate launch` (docs/model.md). Per optimizer step: `grad_accum` micro-batches (gradient
sync only on the last), clipping, AdamW, linear warm-up (then constant or cosine), EMA update.
Determinism: data order = accelerate's seedable sampler (seed + epoch), view choice = Dataset
(seed, epoch, item), noise = a generator re-seeded from (seed, process, step, micro-batch) — so a resumed
run replays exactly the batches and noise of an uninterrupted one. On the CPU its weights are then the same bits;
on a GPU close but not bit-identical (atomic adds in backward kernels, cuDNN's algorithm choice), and a GPU run
draws other noise than a CPU run of the same seed. Several GPUs: DDP with `find_unused_parameters` (a
reference-dropped micro-batch leaves the alignment head without gradients); only the main process writes files, and
an error of one process before the others would wait for it (at the start, a micro-batch it cannot read, a
checkpoint, a loss row, the model's save) stops every process (ranks.py).
accelerate's state is one per process: `mixed_precision` is set by the first `train` call of a process (a later
call asking for another raises accelerate's error; run each training in its own process, as the stage does).

Outputs in out_dir: checkpoints/step_XXXXXX/ (see checkpoint.py), loss.csv, geoface_config.json,
model/ (EMA weights, `GeoFaceTransformer.from_pretrained`). Saving and resuming checkpoints: train_checkpoint.py;
resume never unpickles anything but tensors and plain containers: EMA and step/loss rows are safetensors + JSON,
accelerate's own files are read with `weights_only=True`.
"""
from __future__ import annotations

import contextlib
import math
import resource
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from flame_fitting.core.errors import GeofaceError
from flame_fitting.core.fileio import replace_dir, temp_path, write_json

from .backbone import build_model, vae_path_of
from .checkpoint import LossLog, TrainState, writing
from .config import GeoFaceConfig
from .data import GeoFaceDataset, ShardError, check_compatible, collate
from .diffusion import make_noise_scheduler, training_losses
from .latents import LatentCodec
from .geo_norm import posmap_statistics
from .ranks import stop_together
from .train_checkpoint import check_run_dir, resume_newest, save_checkpoint


class DivergedError(GeofaceError, ArithmeticError):
    """The gradients became NaN or infinite (the same on every process: DDP averages them)."""


def _step_seed(seed: int, rank: int, step: int, micro: int) -> int:
    return ((seed * 1_000_003 + rank) * 10_000_019 + step * 131 + micro) % (2**63 - 1)


def _batches(loader, dataset, start_micro: int, per_epoch: int):
    """Endless micro-batch stream starting at global micro-batch `start_micro` (epochs of `per_epoch`)."""
    micro = start_micro
    while True:
        epoch, offset = divmod(micro, per_epoch)
        loader.set_epoch(epoch)
        dataset.set_epoch(epoch)
        it = loader if offset == 0 else _skip(loader, offset)
        for k, batch in enumerate(it):
            if offset + k >= per_epoch:
                break
            yield batch
            micro += 1


def _skip(loader, n):
    from accelerate import skip_first_batches

    return skip_first_batches(loader, n)


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def train(cfg: GeoFaceConfig, data: str | Path | GeoFaceDataset, out_dir: str | Path, *, max_steps: int | None = None,
          progress: bool = True, resume: bool = True) -> dict:
    """Train (or resume) into out_dir; stop at cfg.train.steps, or earlier at `max_steps` (no final save).

    Returns {"loss_first", "loss_last" (means of the first/last ≤5 logged steps), "steps" (step reached),
    "steps_run", "s_per_step", "peak_mem_mb", "completed", "resumed_from", "skipped_checkpoints",
    "mixed_precision", "device", "n_params"}.
    """
    cfg.validate()
    tc, out_dir = cfg.train, Path(out_dir)
    mp = tc.mixed_precision if torch.cuda.is_available() else "no"
    # several GPUs (DDP): a micro-batch whose reference was dropped (train.cond_dropout) or an alignment loss switched
    # off leaves the alignment head without gradients, which DDP's reducer refuses unless told to look for them
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    accelerator = Accelerator(mixed_precision=mp, kwargs_handlers=[ddp],
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=tc.seed))
    if mp != tc.mixed_precision and accelerator.is_main_process:  # notes: one line each, before the bar starts
        # one write each: a print's text and its newline are two, and a signal between them glued the next line on
        sys.stderr.write(f"train: train.mixed_precision = {tc.mixed_precision} needs a GPU and there is none: "
                         "training in fp32\n")
    with stop_together("could not start"):  # an error of one process stops all, before DDP waits (ranks.py)
        dataset = (data if isinstance(data, GeoFaceDataset)
                   else GeoFaceDataset(data, "train", tc.n_ref, tc.n_tgt, tc.seed))
        where = str(data if not isinstance(data, GeoFaceDataset) else dataset.paths[0])
        check_compatible(dataset.meta, cfg.tokens, where)
        if (dataset.n_ref, dataset.n_tgt) != (tc.n_ref, tc.n_tgt):
            raise ShardError(f"{where}: dataset yields {dataset.n_ref}+{dataset.n_tgt} views, "
                             f"config asks {tc.n_ref}+{tc.n_tgt}")
        out_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            check_run_dir(out_dir, cfg)
        set_seed(tc.seed)
        codec = LatentCodec.from_path(vae_path_of(cfg), accelerator.device)
        model = build_model(cfg, codec.channels, codec.downsample)
        if hasattr(model, "geo_norm_mean"):  # model.geometry_norm: dataset — the training split's statistics
            model.set_geometry_norm(*posmap_statistics(dataset))
            codec.geometry_norm = model.geometry_norm()
        if cfg.model.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        n_params = sum(p.numel() for p in model.parameters())
        opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        n_proc = accelerator.num_processes
        sched = get_scheduler("constant_with_warmup" if tc.lr_schedule == "constant" else "cosine", opt,
                              num_warmup_steps=tc.warmup_steps * n_proc, num_training_steps=tc.steps * n_proc)
        loader = torch.utils.data.DataLoader(dataset, batch_size=tc.batch_size, shuffle=True, drop_last=True,
                                             collate_fn=collate, num_workers=tc.num_workers)
    model, opt, sched, loader = accelerator.prepare(model, opt, sched, loader)
    unwrapped = accelerator.unwrap_model(model)
    ema = EMAModel(unwrapped.parameters(), decay=tc.ema_decay)
    ema.to(accelerator.device)
    state = TrainState()
    with stop_together("could not start"):
        resumed_from, skipped = resume_newest(accelerator, out_dir, ema, state) if resume else (None, [])
        if resumed_from and accelerator.is_main_process:
            sys.stderr.write(f"train: resumed from {resumed_from} at step {state.step} of {tc.steps}"
                             f"{': nothing left to train' if state.step >= tc.steps else ''}\n")
        if accelerator.is_main_process:
            write_json(out_dir / "geoface_config.json", cfg.to_dict(), indent=1)
        per_epoch = (len(loader) // tc.grad_accum) * tc.grad_accum
        if per_epoch == 0:
            raise ShardError(f"{where}: {len(dataset)} samples give {len(loader)} batches of train.batch_size = "
                             f"{tc.batch_size} per process, fewer than train.grad_accum = {tc.grad_accum} (lower "
                             "train.batch_size or train.grad_accum, or add training samples)")
        losslog = LossLog(out_dir / "loss.csv", state.rows, append=accelerator.is_main_process)
    state.rows = losslog.rows
    scheduler = make_noise_scheduler(cfg)
    gen = torch.Generator(device=accelerator.device)
    end = tc.steps if max_steps is None else min(tc.steps, max_steps)
    start = state.step
    stream = _batches(loader, dataset, start * tc.grad_accum, per_epoch)
    bar = tqdm(total=end, initial=start, disable=not (progress and accelerator.is_local_main_process), desc="train")
    times = []
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    measured = state.measured  # gradient norms measured since the last logged row (that row reports their mean)
    try:  # the bar ends its line before an error (or `interrupted`) is printed after it
        while state.step < end:
            t0 = time.perf_counter()
            sums = {"loss": 0.0, "diffusion_loss": 0.0, "align_loss": 0.0, "align_batches": 0.0}
            for micro in range(tc.grad_accum):
                with stop_together(f"could not read its batch of step {state.step + 1}"):  # before DDP's collectives
                    batch = next(stream)
                gen.manual_seed(_step_seed(tc.seed, accelerator.process_index, state.step, micro))
                sync = micro == tc.grad_accum - 1
                with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                    out = training_losses(model, batch, codec, scheduler, cfg, gen, accelerator.device)
                    if micro == 0 and state.step % tc.grad_norm_every == 0:
                        measured.append(loss_grad_norms(out, params))
                    accelerator.backward(out["loss"] / tc.grad_accum)
                sums["loss"] += float(out["loss"].detach()) / tc.grad_accum
                sums["diffusion_loss"] += float(out["diffusion_loss"]) / tc.grad_accum
                if out["align_term"] is not None:  # a micro-batch without the loss (off, reference dropped) adds nothing
                    sums["align_loss"] += float(out["align_loss"])
                    sums["align_batches"] += 1
            norm = (accelerator.clip_grad_norm_(model.parameters(), tc.max_grad_norm) if tc.max_grad_norm > 0 else
                    torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))
            if accelerator.scaler is None and norm is not None and not torch.isfinite(torch.as_tensor(norm)):
                raise DivergedError(f"step {state.step + 1}: the gradient norm is {float(norm)} (loss "
                                    f"{sums['loss']:.4g}): training diverged and stops before that step changes the "
                                    f"weights; nothing is published (checkpoints in {out_dir} are from before it): "
                                    "lower train.lr or check the dataset")
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            ema.step(unwrapped.parameters())
            state.step += 1
            times.append(time.perf_counter() - t0)
            if state.step % tc.log_every == 0 or state.step == tc.steps:  # max_steps: cut as a kill would
                loss, diff, align, n_align = accelerator.reduce(torch.tensor(
                    [sums[k] for k in ("loss", "diffusion_loss", "align_loss", "align_batches")], dtype=torch.float32,
                    device=accelerator.device), "sum").tolist()
                n_proc = accelerator.num_processes
                row = {"step": state.step, "loss": loss / n_proc, "diffusion_loss": diff / n_proc,
                       "align_loss": align / n_align if n_align else float("nan"), "lr": sched.get_last_lr()[0],
                       **{k: _nanmean([m[k] for m in measured]) for k in ("grad_norm_diffusion", "grad_norm_align")}}
                measured.clear()
                with stop_together(f"could not log step {state.step}"):
                    losslog.add(row)  # appends to loss.csv.partial on the main process only
                bar.set_postfix(loss=f"{row['loss']:.4f}")
            bar.update(1)
            if state.step % tc.checkpoint_every == 0 or state.step == tc.steps:
                save_checkpoint(accelerator, out_dir, state.step, tc.keep_checkpoints, losslog, ema, state)
    finally:
        bar.close()
    completed = state.step >= tc.steps
    with stop_together("could not save the model"):
        if completed and accelerator.is_main_process:
            losslog.flush()
            ema.copy_to(unwrapped.parameters())
            tmp = temp_path(out_dir / "model")
            with writing(tmp, out_dir / "model"):
                unwrapped.save_pretrained(str(tmp))
                replace_dir(tmp, out_dir / "model", kind="model")
    rows = losslog.rows
    k = max(1, min(5, len(rows) // 2))
    mean = lambda rs, key="loss": _number(_nanmean([r[key] for r in rs]))  # noqa: E731
    gn = grad_norm_summary(rows)
    return {"loss_first": mean(rows[:k]), "loss_last": mean(rows[-k:]),
            "diffusion_loss_last": mean(rows[-k:], "diffusion_loss"), "align_loss_last": mean(rows[-k:], "align_loss"),
            "steps": state.step, "steps_run": state.step - start,
            "s_per_step": (sum(times[1:]) / (len(times) - 1)) if len(times) > 1 else (times[0] if times else None),
            "peak_mem_mb": _peak_mem_mb(accelerator.device), "completed": completed, "resumed_from": resumed_from,
            "skipped_checkpoints": skipped, "mixed_precision": mp, "device": str(accelerator.device), "n_params": n_params,
            **gn}


def loss_grad_norms(out: dict, params: list[torch.nn.Parameter]) -> dict[str, float]:
    """L2 norms of the gradients of the diffusion term and of the weighted alignment term, taken separately
    (one extra backward pass each, on the steps that measure them; before clipping). The alignment one is
    NaN when the loss is off."""
    def norm(term):
        if term is None or not term.requires_grad:
            return float("nan")
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        return float(torch.nn.utils.get_total_norm([g.float() for g in grads if g is not None]))
    return {"grad_norm_diffusion": norm(out["diffusion_term"]), "grad_norm_align": norm(out.get("align_term"))}


def _nanmean(values) -> float:
    """Mean of the values that are numbers (not NaN); NaN when there is none."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(vals) / len(vals) if vals else float("nan")


def _number(x: float) -> float | None:
    """`x`, or None (JSON null: not measured) for NaN."""
    return None if x is None or math.isnan(x) else float(x)


def grad_norm_summary(rows: list[dict]) -> dict[str, float | None]:
    """Means of the measured per-loss gradient norms over the first and the second half of the run, and the
    alignment / diffusion ratio over the whole run (metrics/train.json). The alignment norm is left out of its means
    where it was not measured (loss off, the measured micro-batch's reference dropped): null when it never was."""
    meas = [r for r in rows if not math.isnan(float(r.get("grad_norm_diffusion", float("nan"))))]
    if not meas:
        return {}
    half = max(1, len(meas) // 2)
    avg = lambda rs, k: _nanmean(float(r[k]) for r in rs)  # noqa: E731
    out = {"grad_norm_diffusion_first_half": avg(meas[:half], "grad_norm_diffusion"),
           "grad_norm_diffusion_second_half": avg(meas[half:] or meas, "grad_norm_diffusion"),
           "grad_norm_align_first_half": avg(meas[:half], "grad_norm_align"),
           "grad_norm_align_second_half": avg(meas[half:] or meas, "grad_norm_align"),
           "grad_norm_measurements": len(meas)}
    d, a = avg(meas, "grad_norm_diffusion"), avg(meas, "grad_norm_align")
    out["grad_norm_align_over_diffusion"] = a / d if d > 0 and not math.isnan(a) else float("nan")
    return {k: v if k == "grad_norm_measurements" else _number(v) for k, v in out.items()}
