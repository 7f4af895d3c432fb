"""Identity and expression bases of the stand-in head (FLAME's `shapedirs` semantics).

Identity (columns 0..n_shape-1 of shapedirs): named, mirror-symmetric anatomical variations
(head width/height/depth, face length, jaw width, chin, cheekbones, forehead slope, nose length/
width/bridge, eye spacing/size, mouth width, lip thickness, ear height, ...) followed by seeded
smooth random fields (Gaussian bumps on landmark anchors; every 4th one antisymmetric), then
Gram–Schmidt orthogonalised in that order and scaled so component k moves its most-moved
vertex by IDENTITY_PEAK(k) = max(1 mm, 5 mm * 0.93^k) at coefficient 1 (~1 std).
Expression (columns 300..300+n_expr-1): named face motions (smile, lip funnel/press, upper
lip raise, lower lip depress, mouth sideways, brows, eyelid close, cheek puff, nose wrinkle, ...)
localised by landmark bumps, masked to the face and away from the chin (jaw-free: opening the
mouth is the jaw joint's job), peak 5–8 mm at coefficient 1 for the main ones (the first nine),
2.5–5 mm for the rest; then seeded random face fields orthogonalised against all earlier
expression fields (peak 2 mm). Expressions are local and overlap (several move the brows or the
mouth corners), so sample them sparsely or with std ~0.5 rather than all at N(0,1). The named expression fields are
not orthogonalised (they are blendshape-like, as in FACS), the random ones are.
"""
from __future__ import annotations

import numpy as np

from .fields import (FieldContext, bump, eyelid_close, gram_schmidt, random_field, scale_to_peak, side,
                     smoothstep, symmetrise, upper_lip)


BROW = (0.014, 0.026, 0.02)  # brow bumps reach up the forehead (no fold when the brows go up)


def identity_peak(k: int) -> float:
    """Largest vertex displacement (m) of identity component k at coefficient 1."""
    return max(0.001, 0.005 * 0.93**k)


def _pair(mp: np.ndarray, i: int) -> np.ndarray:
    """A landmark and its mirror image (2,3)."""
    return np.stack([mp[i], mp[i] * np.array([-1.0, 1.0, 1.0])])


def identity_fields(ctx: FieldContext) -> list[tuple[str, np.ndarray]]:
    """Named identity displacement fields (unscaled, symmetric), in order of importance."""
    v, mp, n = ctx.verts, ctx.mp, ctx.normals
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    zero = np.zeros_like(x)
    eye_y, eye_z = mp[[33, 263], 1].mean(), mp[[33, 263], 2].mean()
    chin, nose_y, mouth_y = mp[152], mp[2, 1], mp[[13, 14], 1].mean()
    brow_y = mp[[105, 334], 1].mean()
    s = side(v)
    front = smoothstep((z - (eye_z - 0.07)) / 0.05)
    ear = np.array([[0.070, eye_y - 0.006, eye_z - 0.082]])
    ears = np.concatenate([ear, ear * [-1, 1, 1]])
    fields = [
        ("head_width", np.stack([x, zero, zero], 1)),
        ("head_height", np.stack([zero, y - eye_y, zero], 1)),
        ("head_depth", np.stack([zero, zero, z - (eye_z - 0.075)], 1)),
        ("face_length", np.stack([zero, -smoothstep((nose_y - y) / (nose_y - chin[1])), zero], 1)),
        ("jaw_width", np.stack([x * np.exp(-(((y - (chin[1] + 0.03)) / 0.025) ** 2)) * front, zero, zero], 1)),
        ("chin", bump(v, chin + [0, 0.012, 0.006], 0.013)[:, None] * [0.0, -0.3, 1.0]),
        ("cheekbones", (bump(v, _pair(mp, 116), 0.015))[:, None] * n),
        ("forehead_slope", np.stack([zero, zero, -np.clip(y - brow_y, 0, None) / 0.05
                                     * np.exp(-((x / 0.06) ** 2)) * front], 1)),
        ("nose_length", bump(v, mp[4], 0.011)[:, None] * [0.0, -0.6, 0.8]),
        ("nose_width", np.stack([s * bump(v, _pair(mp, 129), 0.008), zero, zero], 1)),
        ("nose_bridge", bump(v, mp[6], 0.010)[:, None] * [0.0, 0.0, 1.0]),
        ("eye_spacing", np.stack([s * bump(v, _pair(mp, 468), 0.014), zero, zero], 1)),
        ("eye_size", sum(((v - c) * [1, 1, 0]) / 0.01 * bump(v, c, 0.008)[:, None] for c in _pair(mp, 468))),
        ("mouth_width", np.stack([s * bump(v, _pair(mp, 61), 0.010), zero, zero], 1)),
        ("lip_thickness", (bump(v, mp[[0, 17, 37, 267, 84, 314]], 0.008) * np.clip(np.abs(y - mouth_y) / 0.004, 0, 1))
         [:, None] * np.stack([zero, np.sign(y - mouth_y), 0.4 + zero], 1)),
        ("ear_height", bump(v, ears, 0.02)[:, None] * [0.0, 1.0, 0.0]),
        ("brow_ridge", bump(v, np.concatenate([_pair(mp, 105), _pair(mp, 66)]), 0.012)[:, None] * [0.0, 0.0, 1.0]),
        ("eye_depth", bump(v, _pair(mp, 468), 0.012)[:, None] * [0.0, 0.0, -1.0]),
        ("cheek_fullness", bump(v, _pair(mp, 187), 0.018)[:, None] * n),
        ("neck_thickness", np.stack([x, zero, z - (eye_z - 0.16)], 1) * smoothstep((chin[1] - y) / 0.03)[:, None]),
        ("occiput", bump(v, [0.0, eye_y + 0.01, v[:, 2].min()], 0.04)[:, None] * n),
        ("jaw_angle", bump(v, _pair(mp, 172), 0.018)[:, None] * np.stack([s, -0.3 + zero, zero], 1)),
        ("crown", bump(v, [0.0, v[:, 1].max(), eye_z - 0.075], 0.05)[:, None] * n),
    ]
    return [(name, symmetrise(d, ctx.mirror)) for name, d in fields]


def expression_fields(ctx: FieldContext) -> list[tuple[str, np.ndarray]]:
    """Named expression displacement fields, already scaled to their peak (m) at coefficient 1."""
    v, mp, n = ctx.verts, ctx.mp, ctx.normals
    zero = np.zeros(len(v))
    s = side(v)
    up = upper_lip(ctx)
    mouth = mp[[13, 14]].mean(0)
    corners = _pair(mp, 61)
    left = smoothstep(v[:, 0] / 0.01 + 0.5)  # subject's left half
    above = smoothstep((v[:, 1] - (mp[[105, 107], 1].mean() - 0.012)) / 0.01)  # the eyelids stay put

    def brow(idx: list) -> np.ndarray:  # bumps on brow landmarks reaching up the forehead, not down
        return bump(v, np.concatenate([_pair(mp, i) for i in idx]), BROW) * above
    raw = [
        ("smile", 0.008, bump(v, corners, 0.012)[:, None] * np.stack([0.5 * s, 1 + zero, -0.2 + zero], 1)
         + bump(v, _pair(mp, 205), 0.015)[:, None] * [0.0, 0.6, 0.4]),
        ("lip_funnel", 0.007, bump(v, mouth, 0.012)[:, None] * [0.0, 0.0, 1.0]
         + bump(v, corners, 0.008)[:, None] * np.stack([-0.8 * s, zero, 0.3 + zero], 1)),
        ("lip_press", 0.005, bump(v, mouth, 0.012)[:, None] * np.stack(
            [zero, -np.clip((v[:, 1] - mouth[1]) / 0.008, -1, 1), -0.5 + zero], 1)),
        ("upper_lip_raise", 0.006, (bump(v, mp[0], 0.011) * up)[:, None] * [0.0, 1.0, 0.3]),
        ("lower_lip_depress", 0.006, (bump(v, mp[17], 0.011) * (1 - up))[:, None] * [0.0, -1.0, 0.3]),
        ("brow_raise", 0.007, brow([107, 105])[:, None] * [0, 1.0, 0]),
        ("brow_lower", 0.006, bump(v, np.concatenate([_pair(mp, 107), _pair(mp, 66)]), 0.012)[:, None]
         * np.stack([-0.5 * s, -1 + zero, 0.3 + zero], 1)),
        ("eye_close_left", None, eyelid_close(ctx, "left")),
        ("eye_close_right", None, eyelid_close(ctx, "right")),
        ("cheek_puff", 0.005, bump(v, _pair(mp, 50), 0.018)[:, None] * n),
        ("nose_wrinkle", 0.003, bump(v, np.concatenate([_pair(mp, 129), _pair(mp, 48)]), 0.009)[:, None] * [0, 1.0, 0.3]),
        ("mouth_sideways", 0.005, bump(v, mouth, 0.018)[:, None] * [1.0, 0.0, 0.0]),
        ("smile_asym", 0.004, bump(v, corners, 0.012)[:, None] * np.stack([0.5 * s, 1 + zero, -0.2 + zero], 1)
         * (2 * left - 1)[:, None]),
        ("lip_stretch", 0.004, bump(v, corners, 0.010)[:, None] * np.stack([s, -0.2 + zero, -0.3 + zero], 1)),
        ("lip_corner_depress", 0.004, bump(v, corners, 0.010)[:, None] * [0.0, -1.0, 0.0]),
        ("brow_raise_inner", 0.003, brow([107])[:, None] * [0.0, 1.0, 0.0]),
        ("brow_raise_outer", 0.003, brow([70])[:, None] * [0.0, 1.0, 0.0]),
        ("squint", 0.0025, bump(v, np.concatenate([_pair(mp, 145)]), 0.007)[:, None] * [0.0, 1.0, 0.2]),
        ("brow_asym", 0.003, brow([107, 105])[:, None]
         * np.stack([zero, 2 * left - 1, zero], 1)),
        ("lips_part", 0.0025, bump(v, mouth, 0.012)[:, None] * np.stack([zero, 2 * up - 1, zero], 1)),
    ]
    out = []
    for name, peak, d in raw:
        d = d * (ctx.face_mask * chin_free(ctx))[:, None]
        out.append((name, d if peak is None else scale_to_peak(d, peak)))
    return out


def chin_free(ctx: FieldContext) -> np.ndarray:
    """Weight (V,) that vanishes on the chin / jaw underside, so expressions leave the jaw alone."""
    chin = ctx.mp[[152, 199, 175]]
    return 1.0 - np.clip(bump(ctx.verts, chin, 0.011), 0, 1)


def build_bases(ctx: FieldContext, n_shape: int, n_expr: int, seed: int) -> tuple[np.ndarray, np.ndarray, list, list]:
    """(identity (V,3,n_shape), expression (V,3,n_expr), identity names, expression names)."""
    rng = np.random.default_rng(seed)
    named = identity_fields(ctx)[:n_shape]
    names = [nm for nm, _ in named]
    fields = [d for _, d in named]
    for k in range(len(fields), n_shape):
        fields.append(random_field(ctx, rng, (0.015, 0.04), face_only=k % 2 == 0, odd=k % 4 == 3))
        names.append(f"random_{k}")
    fields = gram_schmidt(fields)
    ident = np.stack([scale_to_peak(f, identity_peak(k)) for k, f in enumerate(fields)], -1)
    named_e = expression_fields(ctx)[:n_expr]
    enames = [nm for nm, _ in named_e]
    efields = [d for _, d in named_e]
    n_named = len(efields)
    for k in range(n_named, n_expr):
        d = random_field(ctx, rng, (0.008, 0.02), face_only=True, odd=k % 3 == 2) * chin_free(ctx)[:, None]
        efields.append(d)
        enames.append(f"random_{k}")
    efields = gram_schmidt(efields, start=n_named)
    efields = efields[:n_named] + [scale_to_peak(d, 0.002) for d in efields[n_named:]]
    expr = np.stack(efields, -1) if efields else np.zeros((len(ctx.verts), 3, 0))
    return ident, expr, names, enames
