"""NeRSemble colour matrices with more than 4 terms. nersemble-data (v2 color_calibration.json) expands linear
RGB with colour-science's `matrix_augmented_Cheung2004(RGB, terms=ccm.shape[-1])`; v1's .npy files are affine
only upstream (nersemble's dataset code, VHAP). The references below write each expansion out as monomials."""
import json

import cv2
import numpy as np
import pytest
from writers import Scene, make_cameras, srgb_to_linear, write_nersemble

from flame_fitting.formats.capture import load_capture
from pipelines.import_config import ImportConfig
from pipelines.nersemble import correct_color, import_capture
from pipelines.nersemble_cameras import CHEUNG_TERMS, cheung_features

_19 = "r g b rg rb gb rr gg bb rgb rrg ggb bbr rrb ggr bbg rrr ggg bbb"
EXPANSIONS = {  # colour.characterisation.matrix_augmented_Cheung2004, in its column order
    3: "r g b", 4: "r g b 1", 5: "r g b rgb 1", 7: "r g b rg rb gb 1", 8: "r g b rg rb gb rgb 1",
    10: "r g b rg rb gb rr gg bb 1", 11: "r g b rg rb gb rr gg bb rgb 1", 14: "r g b rg rb gb rr gg bb rgb rrr ggg bbb 1",
    16: "r g b rg rb gb rr gg bb rgb rrg ggb bbr rrr ggg bbb", 17: "r g b rg rb gb rr gg bb rgb rrg ggb bbr rrr ggg bbb 1",
    19: _19, 20: _19 + " 1", 22: _19 + " rrgb rggb rgbb",
    35: _19 + " rrrg rrrb gggr gggb bbbr bbbg rrgb rggb rgbb rrgg rrbb ggbb rrrr gggg bbbb 1",
}


def expand(rgb, terms):
    """(N,3) -> (N,terms): each word of EXPANSIONS[terms] is a product of channels ('1' = constant)."""
    ch = dict(zip("rgb", rgb.T))
    return np.stack([np.prod([ch[c] for c in w], axis=0) if w != "1" else np.ones(len(rgb))
                     for w in EXPANSIONS[terms].split()], axis=1)


def reference(img, ccm):
    """nersemble-data's correct_color: /255, sRGB decode, ccm @ expansion, encode (sign-preserving), clip, astype."""
    lin = srgb_to_linear(img.reshape(-1, 3) / 255.0)
    out = expand(lin, ccm.shape[1]) @ ccm.T
    enc = np.where(out <= 0.0031308, 12.92 * out, 1.055 * np.sign(out) * np.abs(out) ** (1 / 2.4) - 0.055)
    return np.clip(enc * 255, 0, 255).astype(np.uint8).reshape(img.shape)


def polynomial_ccm(terms, rng):
    """(3,terms): a near-identity linear part, small higher-order and constant terms."""
    M = rng.uniform(-0.05, 0.05, (3, terms))
    M[:, :3] += np.eye(3) * 1.1
    return M


def test_supported_term_counts_are_upstreams():
    assert sorted(CHEUNG_TERMS) == sorted(EXPANSIONS)
    assert all(len(e) == t and len(set(e)) == t for t, e in CHEUNG_TERMS.items())


@pytest.mark.parametrize("terms", sorted(EXPANSIONS))
def test_cheung_features(terms):
    rgb = np.random.default_rng(terms).uniform(0, 1, (500, 3))
    np.testing.assert_allclose(cheung_features(rgb, terms), expand(rgb, terms), rtol=1e-13, atol=0)


@pytest.mark.parametrize("terms", sorted(EXPANSIONS))
def test_correct_color_every_term_count(terms):
    rng = np.random.default_rng(100 + terms)
    img = rng.integers(0, 256, (30, 40, 3)).astype(np.uint8)
    ccm = polynomial_ccm(terms, rng)
    out = correct_color(img, ccm)
    np.testing.assert_array_equal(out, reference(img, ccm))
    if terms > 4:  # the higher-order terms matter: the affine part alone gives another image
        affine = correct_color(img, ccm[:, :3])
        assert np.abs(out.astype(int) - affine).mean() > 1


def test_v2_import_with_5_and_7_term_matrices(tmp_path):
    scene = Scene({f"2222000{i}": c for i, c in enumerate(make_cameras(3).values())})
    write_nersemble(tmp_path / "ns", scene, media="images", per_serial_intrinsics=True, frames=[0, 1])
    rng = np.random.default_rng(5)
    ccm = dict(zip(scene.cameras, (polynomial_ccm(t, rng) for t in (5, 7, 4))))
    (tmp_path / "ns/017/calibration/color_calibration.json").write_text(json.dumps({s: m.tolist() for s, m in ccm.items()}))
    report = import_capture(tmp_path / "ns", tmp_path / "cap", ImportConfig())
    assert report.n_images == 6 and not report.skipped
    cap = load_capture(tmp_path / "cap", check_hashes=True)
    assert cap.info["color_calibration"] == ["017/calibration/color_calibration.json"]
    for row in cap.manifest.to_dict("records"):
        raw = cv2.imread(str(tmp_path / "ns" / row["source_path"]))[..., ::-1]
        corrected = reference(raw, ccm[row["camera"]])
        np.testing.assert_array_equal(cap.image(row), corrected)
        assert np.abs(corrected.astype(int) - raw).mean() > 1


def test_unsupported_term_counts_are_named(tmp_path):
    # v2: a 3×6 matrix (no Cheung expansion has 6 terms) or a 4×4 one skips only its camera, naming file and camera
    scene = Scene({f"2222000{i}": c for i, c in enumerate(make_cameras(3).values())})
    write_nersemble(tmp_path / "v2", scene, media="images", frames=[0])
    bad = {"22220000": np.eye(3).tolist(), "22220001": np.hstack([np.eye(3), np.zeros((3, 3))]).tolist(),
           "22220002": np.eye(4).tolist()}
    (tmp_path / "v2/017/calibration/color_calibration.json").write_text(json.dumps(bad))
    report = import_capture(tmp_path / "v2", tmp_path / "cap", ImportConfig())
    assert report.n_images == 1 and len(report.skipped) == 2
    reasons = {s["item"]: s["reason"] for s in report.skipped}
    terms = "3, 4, 5, 7, 8, 10, 11, 14, 16, 17, 19, 20, 22, 35 (the terms of Cheung 2004's expansions)"
    assert reasons["017/calibration/color_calibration.json [camera 22220001]"] == (
        f"colour matrix of camera 22220001 is 3×6; expected 3×T with T one of {terms}")
    assert reasons["017/calibration/color_calibration.json [camera 22220002]"] == (
        f"colour matrix of camera 22220002 is 4×4; expected 3×T with T one of {terms}")
    # v1: .npy files are affine (3×4 or 4×4) upstream; a 3×7 one skips only its camera, naming the file
    aff = {s: np.eye(4) for s in scene.cameras}
    write_nersemble(tmp_path / "v1", scene, pid="18", version=1, frames=[0], affine=aff)
    np.save(tmp_path / "v1/18/annotations/EMO-1/color_correction/22220001.npy", polynomial_ccm(7, np.random.default_rng(7)))
    report = import_capture(tmp_path / "v1", tmp_path / "cap1", ImportConfig())
    assert report.n_images == 2
    (skip,) = report.skipped
    assert skip["item"] == "18/annotations/EMO-1/color_correction/22220001.npy"
    assert "expected shape (3, 4), got (3, 7)" in skip["reason"] and "\n" not in skip["reason"]
