"""How much of a held-out head's canonical UV position map can be inferred from its 64x64 reference view?

Independent of the diffusion model. Uses the data of a geoface checkout (data/dataset shards, data/fits,
data/captures, data/head_model) and geoface's own code for the reference choice (evaluate.canonical_transform,
yaw_pitch, choose_views: the evaluation's most frontal view), the target (the shards' uv_posmap / uv_mask = the
fitted head) and the error (metrics_geometry.posmap_error_mm = `geometry_error_mm`; mean over samples of the
per-sample mean and of the per-sample p95, as metrics/eval.json aggregates them).

Estimators (all scored on the test split): mean training map; ridge (kernel form) from reference pixels (+ mask,
+ camera); a small CNN; oracle maps from the fit's / generator's coefficients with one factor removed; R^2 in
squared mm and the "sample" simulation (estimate + a residual of another training sample).

Run from a checkout whose data/ holds the learn preset's data (params.yaml with README's learn-preset
`captures.synthetic` values, then `dvc repro dataset`, ~13 min on 2 shared cores):
  nice python benchmarks/geometry_bound.py [--root .] [--cnn-seconds 240] [--oracle-only]   (~5 min)
Prints one JSON line at the end. Measured: docs/model.md "What the reference view tells about the geometry".
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from flame_fitting.formats.fits import load_sequence_fit
from flame_fitting.geometry.camera import Camera
from flame_fitting.geometry.raster import rasterize
from flame_fitting.head.head_model import load_head_model
from flame_fitting.uv import UVLayout, bake_posmap
from flame_fitting.uv.bake import denormalize_points
from geoface_model.data import GeoFaceDataset
from geoface_model.evaluate import canonical_transform, choose_views, yaw_pitch
from geoface_model.metrics_geometry import posmap_error_mm

torch.set_num_threads(1)
MM = 250.0  # box half-size: 1 normalised unit = 0.25 m (denormalize_points is affine with this slope)


def load_split(root: Path, split: str, head_cache: dict, fits_cache: dict, gutter: int, oracle: bool) -> dict:
    ds = GeoFaceDataset(root / "data/dataset", split, n_ref=1, n_tgt=1, random_views=False)
    out = {k: [] for k in ("name", "subject", "ref_img", "ref_mask", "ref_cam", "all_img", "all_mask", "all_dir",
                           "posmap", "mask", "oracles", "sil")}
    for i in range(len(ds)):
        s, j = ds.items[i]
        info = ds.metas[s].samples[j]
        subj, seq, frame = info["subject"], info["sequence"], int(info["frame"])
        key = f"{subj}/{seq}"
        if key not in fits_cache:
            fits_cache[key] = load_sequence_fit(root / "data/fits" / subj / seq)
        fit = fits_cache[key]
        k = int(np.flatnonzero(fit["frame"] == frame)[0])
        dims = (fit["shape"].shape[1], fit["expr"].shape[1])
        if dims not in head_cache:
            hm = load_head_model(root / "data/head_model", n_shape=dims[0], n_expr=dims[1])
            head_cache[dims] = (hm, UVLayout.from_head_model(hm))
        head, layout = head_cache[dims]
        V, S = ds.metas[s].n_views, ds.meta.resolution
        full = ds.item(i, np.arange(V))
        T, canon = canonical_transform(head, fit, k)
        cams = [Camera(K=full["K"][v].numpy(), world_to_cam=full["world_to_cam"][v].numpy().astype(np.float64) @ T,
                       width=S, height=S) for v in range(V)]
        centre = 0.5 * (canon.min(0) + canon.max(0))
        yaw, pitch = yaw_pitch(cams, centre)
        ref, _ = choose_views(yaw, pitch, 4, 75.0)
        imgs = full["images"].numpy().astype(np.float32)  # (V,3,S,S) in [-1,1]
        masks = full["masks"].numpy().astype(np.float32)  # (V,1,S,S)
        out["name"].append(f"{key}/{frame:05d}")
        out["subject"].append(subj)
        out["ref_img"].append(imgs[ref])
        out["ref_mask"].append(masks[ref])
        c = cams[ref]
        d = (c.center - centre)
        out["ref_cam"].append(np.r_[np.asarray(c.world_to_cam, np.float64)[:3].ravel(), np.asarray(c.K).ravel()[[0, 2, 4, 5]],
                                    d / np.linalg.norm(d)])
        out["all_img"].append(imgs)
        out["all_mask"].append(masks)
        out["all_dir"].append(np.stack([np.sin(np.radians(yaw)), np.cos(np.radians(yaw)), np.sin(np.radians(pitch))], 1))
        pm = full["uv_posmap"].permute(1, 2, 0).numpy().astype(np.float64)
        um = full["uv_mask"][0].numpy() > 0.5
        out["posmap"].append(pm)
        out["mask"].append(um)
        if oracle:
            out["oracles"].append(oracles(root, head, layout, fit, k, info, pm, um, gutter, canon, c))
            out["sil"].append(silhouette_shift(head, fit, k, c))
    for kk in ("ref_img", "ref_mask", "ref_cam", "all_img", "all_mask", "all_dir", "posmap", "mask"):
        out[kk] = np.stack(out[kk])
    return out


def canon_of(head, coef: dict) -> np.ndarray:
    t = lambda n: torch.as_tensor(np.asarray(coef[n], np.float32)[None])  # noqa: E731
    with torch.no_grad():
        return head.canonical(t("shape"), t("expr"), t("jaw_pose"), neck_pose=t("neck_pose"), eye_pose=t("eye_pose"))[0].numpy()


def variants(coef: dict) -> dict:
    z = {n: np.zeros_like(np.asarray(v, np.float32)) for n, v in coef.items()}
    return {"full": coef,
            "zero_shape": {**coef, "shape": z["shape"]},  # true expression / jaw / neck / eyes, mean identity
            "shape_only": {**z, "shape": coef["shape"]},  # true identity, neutral expression and pose
            "expr_jaw_only_zero": {**coef, "expr": z["expr"], "jaw_pose": z["jaw_pose"]},  # identity+neck/eyes
            "neck_only_zero": {**coef, "neck_pose": z["neck_pose"]},
            "eyes_only_zero": {**coef, "eye_pose": z["eye_pose"]},
            "all_zero": z}


def oracles(root, head, layout, fit, k, info, pm, um, gutter, canon, cam) -> dict:
    names = ("shape", "expr", "jaw_pose", "neck_pose", "eye_pose")
    R = pm.shape[0]
    res = {}
    fcoef = {n: fit[n][k] for n in names}
    for tag, coef in variants(fcoef).items():
        p = bake_posmap(canon_of(head, coef), layout, R, gutter).posmap.astype(np.float64)
        res[f"fit_{tag}"] = p
    gt_path = root / "data/captures" / info["subject"] / info["sequence"] / f"{int(info['frame']):05d}" / "gt.npz"
    if gt_path.is_file():
        g = np.load(gt_path)
        gcoef = {n: np.asarray(g[n], np.float32)[:len(fcoef[n])] for n in names}
        if all(len(gcoef[n]) == len(fcoef[n]) for n in names):
            for tag, coef in variants(gcoef).items():
                p = bake_posmap(canon_of(head, coef), layout, R, gutter).posmap.astype(np.float64)
                res[f"gen_{tag}"] = p
    return res


def silhouette_shift(head, fit, k, cam: Camera, up: int = 8) -> dict:
    """How far (in 64-px reference pixels) the identity shape moves the reference view's silhouette: the fitted
    head vs the same head with mean (zero) shape, same expression, pose and camera."""
    names = ("shape", "expr", "jaw_pose", "neck_pose", "eye_pose")
    coef = {n: fit[n][k] for n in names}
    v_true = canon_of(head, coef)
    v_mean = canon_of(head, {**coef, "shape": np.zeros_like(coef["shape"])})
    big = cam.resized(cam.width * up, cam.height * up)
    faces = np.asarray(head.faces)
    K, W = np.asarray(big.K, np.float64)[None], np.asarray(big.world_to_cam, np.float64)[None]
    m1 = rasterize(v_true, faces, K, W, big.width, big.height).face_id[0] >= 0
    m0 = rasterize(v_mean, faces, K, W, big.width, big.height).face_id[0] >= 0
    cs, _ = cv2.findContours(m1.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    per = sum(cv2.arcLength(c, True) for c in cs)
    xor = float((m1 ^ m0).sum())
    uv1, _ = cam.project(v_true.astype(np.float64))
    uv0, _ = cam.project(v_mean.astype(np.float64))
    dpx = np.linalg.norm(uv1 - uv0, axis=1)
    return {"boundary_shift_px64": xor / max(per, 1.0) / up,  # XOR area / perimeter = mean normal shift (big px), / up
            "area_change_frac": xor / max(m1.sum(), 1),
            "vertex_shift_px64_mean": float(dpx.mean()), "vertex_shift_px64_p95": float(np.percentile(dpx, 95)),
            "head_height_px64": float(np.ptp(np.nonzero(m1)[0]) / up) if m1.any() else 0.0}


# ----------------------------------------------------------------------------- scoring
def score(pred: np.ndarray, d: dict) -> dict:
    """pred (N,R,R,3) normalised maps vs d's targets -> geometry_error_mm figures + squared error sums."""
    mean_mm, p95, sq = [], [], []
    for p, g, m in zip(pred, d["posmap"], d["mask"]):
        e = posmap_error_mm(p.astype(np.float32), g.astype(np.float32), m)
        mean_mm.append(e["geo_mean_mm"])
        p95.append(e["geo_p95_mm"])
        dd = (denormalize_points(p[m].astype(np.float32)).astype(np.float64) - denormalize_points(g[m].astype(np.float32))) * 1e3
        sq.append(float((dd ** 2).sum(1).mean()))  # mean squared distance over texels, mm^2
    return {"mean_mm": float(np.mean(mean_mm)), "p95_mm": float(np.mean(p95)),
            "p95_over_samples_mm": float(np.percentile(mean_mm, 95)), "msd_mm2": float(np.mean(sq)),
            "per_sample_mm": mean_mm}


def r2(s: dict, s_mean: dict) -> float:
    return 1.0 - s["msd_mm2"] / s_mean["msd_mm2"]


# ----------------------------------------------------------------------------- ridge (kernel form)
def features(d: dict, kind: str, stats=None):
    n = len(d["posmap"])
    parts = []
    if "pix" in kind:
        parts.append(d["ref_img"].reshape(n, -1))
    if "mask" in kind:
        parts.append(d["ref_mask"].reshape(n, -1))
    if "small" in kind:  # 16x16 block means of image + mask
        x = np.concatenate([d["ref_img"], d["ref_mask"]], 1)
        parts.append(x.reshape(n, 4, 16, 4, 16, 4).mean((3, 5)).reshape(n, -1))
    X = np.concatenate(parts, 1).astype(np.float64)
    if "cam" in kind:
        C = d["ref_cam"].astype(np.float64)
    else:
        C = np.zeros((n, 0))
    if stats is None:
        mu, sd = X.mean(0), X.std() + 1e-9
        cmu, csd = C.mean(0), C.std(0) + 1e-9
        stats = (mu, sd, cmu, csd)
    mu, sd, cmu, csd = stats
    Xs = (X - mu) / sd
    if C.shape[1]:
        # camera block weighted so it carries as much total variance as the pixels
        w = np.sqrt(Xs.var(0).sum() / C.shape[1]) if C.shape[1] else 0.0
        Xs = np.concatenate([Xs, (C - cmu) / csd * w], 1)
    return Xs, stats


def targets(d: dict, mean_map: np.ndarray, union_mask: np.ndarray) -> np.ndarray:
    return (d["posmap"] - mean_map)[:, union_mask].reshape(len(d["posmap"]), -1)


def to_maps(Y: np.ndarray, mean_map: np.ndarray, union_mask: np.ndarray) -> np.ndarray:
    out = np.repeat(mean_map[None], len(Y), 0).copy()
    out[:, union_mask] += Y.reshape(len(Y), -1, 3)
    return out


def kridge_fit_predict(Xtr, Ytr, Xte, lam):
    K = Xtr @ Xtr.T
    A = np.linalg.solve(K + lam * np.trace(K) / len(K) * np.eye(len(K)), Ytr)
    return (Xte @ Xtr.T) @ A


def group_folds(subjects: list[str], n_folds: int = 5) -> list[np.ndarray]:
    u = sorted(set(subjects))
    rng = np.random.default_rng(0)
    rng.shuffle(u)
    fold_of = {s: i % n_folds for i, s in enumerate(u)}
    f = np.array([fold_of[s] for s in subjects])
    return [np.flatnonzero(f == i) for i in range(n_folds)]


def ridge_estimator(tr, va, te, kind, mean_map, um, lams):
    Xtr, st = features(tr, kind)
    Xva, _ = features(va, kind, st)
    Xte, _ = features(te, kind, st)
    Ytr = targets(tr, mean_map, um)
    folds = group_folds(tr["subject"])
    cv = {}
    oof_best = None
    for lam in lams:
        oof = np.zeros_like(Ytr)
        for idx in folds:
            rest = np.setdiff1d(np.arange(len(Ytr)), idx)
            oof[idx] = kridge_fit_predict(Xtr[rest], Ytr[rest], Xtr[idx], lam)
        cv[lam] = float(((oof - Ytr) ** 2).sum(1).mean())
    lam = min(cv, key=cv.get)
    for l2 in lams:  # recompute the oof of the chosen lambda (residuals for the sample simulation)
        if l2 == lam:
            oof_best = np.zeros_like(Ytr)
            for idx in folds:
                rest = np.setdiff1d(np.arange(len(Ytr)), idx)
                oof_best[idx] = kridge_fit_predict(Xtr[rest], Ytr[rest], Xtr[idx], lam)
    pva = to_maps(kridge_fit_predict(Xtr, Ytr, Xva, lam), mean_map, um)
    pte = to_maps(kridge_fit_predict(Xtr, Ytr, Xte, lam), mean_map, um)
    cv_r2 = {f"{l:g}": 1 - v / float((Ytr ** 2).sum(1).mean()) for l, v in cv.items()}  # vs train mean (approx.)
    return pte, pva, lam, cv_r2, to_maps(oof_best, mean_map, um)


# ----------------------------------------------------------------------------- CNN
class Net(torch.nn.Module):
    def __init__(self, n_out: int, n_dir: int = 3):
        super().__init__()
        c = 32
        self.f = torch.nn.Sequential(
            torch.nn.Conv2d(4, c, 3, padding=1), torch.nn.GELU(), torch.nn.MaxPool2d(2),  # 32
            torch.nn.Conv2d(c, c, 3, padding=1), torch.nn.GELU(), torch.nn.MaxPool2d(2),  # 16
            torch.nn.Conv2d(c, 2 * c, 3, padding=1), torch.nn.GELU(), torch.nn.MaxPool2d(2),  # 8
            torch.nn.Conv2d(2 * c, 2 * c, 3, padding=1), torch.nn.GELU(), torch.nn.MaxPool2d(2),  # 4
            torch.nn.Flatten())
        self.h = torch.nn.Sequential(torch.nn.Linear(2 * c * 16 + n_dir, 128), torch.nn.GELU(), torch.nn.Dropout(0.2),
                                     torch.nn.Linear(128, n_out))

    def forward(self, x, dirs):
        return self.h(torch.cat([self.f(x), dirs], 1))


def cnn_estimator(tr, va, te, mean_map, um, seconds: float, all_views: bool, seed: int = 0):
    torch.manual_seed(seed)
    Ytr = targets(tr, mean_map, um)
    # PCA of the training residuals (orthonormal: coefficient MSE + truncation = map MSE)
    U, Sv, Vt = np.linalg.svd(Ytr, full_matrices=False)
    kk = int(min(len(Sv), 40))
    B = Vt[:kk]  # (k, D)
    ctr = Ytr @ B.T
    scale = float(ctr.std())
    def inp(d, views):
        if views:
            x = np.concatenate([d["all_img"], d["all_mask"]], 2)  # (N,V,4,S,S)
            n, V = x.shape[:2]
            return torch.tensor(x.reshape(n * V, 4, 64, 64)), torch.tensor(d["all_dir"].reshape(n * V, 3), dtype=torch.float32), V
        x = np.concatenate([d["ref_img"], d["ref_mask"]], 1)
        dirs = d["ref_cam"][:, -3:]
        return torch.tensor(x), torch.tensor(np.stack([dirs[:, 0], dirs[:, 2], dirs[:, 1]], 1), dtype=torch.float32), 1
    # direction features: (sin yaw, cos yaw, sin pitch) for all views; for references the unit direction has
    # x = sin(yaw)cos(pitch), z = cos(yaw)cos(pitch), y = sin(pitch): close to the same numbers for frontal views
    xtr, dtr, V = inp(tr, all_views)
    ytr = torch.tensor(np.repeat(ctr / scale, V, 0), dtype=torch.float32)
    xva, dva, _ = inp(va, False)
    xte, dte, _ = inp(te, False)
    net = Net(kk)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-3)
    Yva = targets(va, mean_map, um)
    best, best_state, ep, t0, log = np.inf, None, 0, time.time(), []
    rng = np.random.default_rng(seed)
    while time.time() - t0 < seconds:
        net.train()
        perm = rng.permutation(len(xtr))
        for b in range(0, len(perm), 32):
            idx = torch.as_tensor(perm[b:b + 32])
            x = xtr[idx]
            # small augmentation: brightness / 1-px shifts
            x = torch.roll(x, shifts=(int(rng.integers(-1, 2)), int(rng.integers(-1, 2))), dims=(2, 3))
            x[:, :3] = x[:, :3] * float(rng.uniform(0.9, 1.1))
            loss = ((net(x, dtr[idx]) - ytr[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            pva = net(xva, dva).numpy() * scale @ B
        v = float(((pva - Yva) ** 2).sum(1).mean())
        log.append(v)
        if v < best:
            best, best_state = v, {k2: t.clone() for k2, t in net.state_dict().items()}
        ep += 1
    net.load_state_dict(best_state)
    net.eval()
    with torch.no_grad():
        pte = net(xte, dte).numpy() * scale @ B
        pva = net(xva, dva).numpy() * scale @ B
    return to_maps(pte, mean_map, um), to_maps(pva, mean_map, um), {"epochs": ep, "best_epoch": int(np.argmin(log)) + 1,
                                                                      "k_pca": kk, "train_images": int(len(xtr))}


def sample_sim(pred_te: np.ndarray, oof_tr: np.ndarray, tr: dict, te: dict, n_draw: int = 30, seed: int = 0) -> dict:
    """pred + the out-of-fold residual of a randomly drawn training sample: a 'posterior sample' whose spread is
    the estimator's own residual spread. Scored like geometry_error_mm."""
    rng = np.random.default_rng(seed)
    res = tr["posmap"] - oof_tr
    vals, sq = [], []
    for _ in range(n_draw):
        j = rng.integers(0, len(res), len(pred_te))
        s = score(pred_te + res[j], te)
        vals.append(s["mean_mm"])
        sq.append(s["msd_mm2"])
    return {"mean_mm": float(np.mean(vals)), "msd_mm2": float(np.mean(sq))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=".", help="checkout whose data/ holds the shards, fits, captures, head model")
    ap.add_argument("--cnn-seconds", type=float, default=240.0, help="training time of the two CNN estimators together")
    ap.add_argument("--gutter", type=int, default=4, help="uv.gutter of the data (texels)")
    ap.add_argument("--oracle-only", action="store_true", help="skip the ridge and CNN estimators")
    a = ap.parse_args()
    root = Path(a.root)
    t0 = time.time()
    hc, fc = {}, {}
    tr = load_split(root, "train", hc, fc, a.gutter, oracle=False)
    va = load_split(root, "val", hc, fc, a.gutter, oracle=False)
    te = load_split(root, "test", hc, fc, a.gutter, oracle=True)
    print(f"loaded train {len(tr['posmap'])} val {len(va['posmap'])} test {len(te['posmap'])} samples in {time.time() - t0:.0f}s",
          flush=True)
    mean_map = tr["posmap"].mean(0)  # as baselines.training_stats (per-texel mean of every training map)
    um = tr["mask"].any(0) | va["mask"].any(0) | te["mask"].any(0)
    R = {}
    s_mean = score(np.repeat(mean_map[None], len(te["posmap"]), 0), te)
    s_mean_va = score(np.repeat(mean_map[None], len(va["posmap"]), 0), va)
    R["mean_training_map"] = {**s_mean, "r2": 0.0}
    # a perfect sampler that ignores the reference: a random training map (the prior)
    rng = np.random.default_rng(0)
    vals, sq = [], []
    for _ in range(30):
        s = score(tr["posmap"][rng.integers(0, len(tr["posmap"]), len(te["posmap"]))], te)
        vals.append(s["mean_mm"]); sq.append(s["msd_mm2"])
    R["random_training_map (prior sample)"] = {"mean_mm": float(np.mean(vals)), "msd_mm2": float(np.mean(sq)),
                                                "r2": 1 - float(np.mean(sq)) / s_mean["msd_mm2"]}
    lams = [1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0, 1e3]
    sims = {}
    for kind in (() if a.oracle_only else ("pix", "pix+mask", "pix+mask+cam", "small", "mask")):
        t1 = time.time()
        pte, pva, lam, cvr2, oof = ridge_estimator(tr, va, te, kind, mean_map, um, lams)
        s = score(pte, te)
        sv = score(pva, va)
        R[f"ridge[{kind}]"] = {**s, "r2": r2(s, s_mean), "val_r2": r2(sv, s_mean_va), "lambda": lam,
                               "cv_r2_by_lambda": cvr2, "seconds": round(time.time() - t1, 1)}
        sims[f"ridge[{kind}]"] = sample_sim(pte, oof, tr, te)
        print(kind, json.dumps({k: v for k, v in R[f"ridge[{kind}]"].items() if k != "per_sample_mm"}), flush=True)
    for all_views in (() if a.oracle_only else (False, True)):
        t1 = time.time()
        pte, pva, info = cnn_estimator(tr, va, te, mean_map, um, a.cnn_seconds / 2, all_views)
        s, sv = score(pte, te), score(pva, va)
        name = f"cnn[{'all 16 views of train' if all_views else 'reference views'}]"
        R[name] = {**s, "r2": r2(s, s_mean), "val_r2": r2(sv, s_mean_va), **info, "seconds": round(time.time() - t1, 1)}
        print(name, json.dumps({k: v for k, v in R[name].items() if k != "per_sample_mm"}), flush=True)
    # oracles
    O = {}
    for key in te["oracles"][0]:
        p = np.stack([o[key] for o in te["oracles"]])
        s = score(p, te)
        O[key] = {"mean_mm": s["mean_mm"], "p95_mm": s["p95_mm"], "msd_mm2": s["msd_mm2"], "r2": r2(s, s_mean)}
    # sanity: the fit's full map is the target itself
    sil = {k: float(np.mean([x[k] for x in te["sil"]])) for k in te["sil"][0]}
    sil_p95 = {k + "_p95_over_samples": float(np.percentile([x[k] for x in te["sil"]], 95)) for k in te["sil"][0]}
    # variance of the identity part and of the rest, relative to the test set's spread around the mean map
    summary = {"n": {"train": len(tr["posmap"]), "val": len(va["posmap"]), "test": len(te["posmap"])},
               "estimators": {k: {kk: v for kk, v in d.items() if kk != "per_sample_mm"} for k, d in R.items()},
               "sample_simulation": sims, "oracles": O, "silhouette_shift_zero_shape": {**sil, **sil_p95},
               "seconds": round(time.time() - t0, 1)}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
