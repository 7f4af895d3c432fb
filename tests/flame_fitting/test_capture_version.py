"""The capture version id (flame_fitting/formats/capture_version.py): recorded by the writer, stable under the order
of rows and cameras, the folder's place and the layout of its JSON files, changed by any pixel, mask, split or
calibration; and the capture diff behind `geoface diff-captures`."""
import json
import os
import shutil
import threading

import numpy as np
import pandas as pd
import pytest

from flame_fitting.formats.capture import CaptureError, CaptureWriter, capture_index, capture_version, load_capture
from flame_fitting.formats.capture_version import CAMERA_RTOL, camera_changes, diff_indexes, format_diff, same_camera
from flame_fitting.formats.lineage import LineageError, read_lineage
from flame_fitting.geometry.camera import Camera, intrinsics, look_at


def cams(n=3, w=32, h=24, f=30.0):
    return {f"cam{i}": Camera(K=intrinsics(f, f, w / 2, h / 2), width=w, height=h, name=f"cam{i}",
                              world_to_cam=look_at([np.sin(i), 0, np.cos(i)], [0, 0, 0])) for i in range(n)}


def content(subjects=("s1", "s2"), frames=2, n_cams=3, seed=0):
    """{(subject, sequence, frame, camera): (image, mask)} and {(subject, sequence): cameras}."""
    rng = np.random.default_rng(seed)
    images, cameras = {}, {}
    for s in subjects:
        cameras[(s, "seq")] = cams(n_cams)
        for f in range(frames):
            for c in cameras[(s, "seq")]:
                img = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
                images[(s, "seq", f, c)] = (img, (img[..., 0] > 128).astype(np.uint8) * 255)
    return images, cameras


def write(root, images, cameras, order=None, split="train"):
    """The capture of `images` and `cameras` at `root`; a callable `split` ((subject, sequence, frame, camera) ->
    split) is written into the manifest afterwards, as by hand (the version id then computed from the files): the
    writer and load_capture refuse a sequence of several splits, but the content index and the diff read one."""
    keys = list(images) if order is None else order(list(images))
    with CaptureWriter(root, source="test") as w:
        for (s, q), c in cameras.items():
            names = list(c) if order is None else order(list(c))
            w.set_cameras(s, q, {n: c[n] for n in names})
        for k in keys:
            img, mask = images[k]
            w.add_image(*k, img, split="train" if callable(split) else split, mask=mask)
    if callable(split):
        m = pd.read_parquet(root / "manifest.parquet")
        m["split"] = [split(k) for k in zip(m.subject, m.sequence, m.frame, m.camera)]
        m.to_parquet(root / "manifest.parquet", index=False)
        info = json.loads((root / "capture.json").read_text())
        (root / "capture.json").write_text(json.dumps({k: v for k, v in info.items() if k != "version_id"}))
    return root


def test_writer_records_the_version_and_it_equals_the_recomputed_one(tmp_path):
    root = write(tmp_path / "cap", *content())
    info = json.loads((root / "capture.json").read_text())
    assert len(info["version_id"]) == 16
    assert capture_index(root).version == info["version_id"] == capture_version(root)
    assert load_capture(root).manifest.mask_sha256.str.len().eq(64).all()


def test_version_is_stable_under_order_place_and_json_layout(tmp_path):
    images, cameras = content()
    a = write(tmp_path / "a", images, cameras)
    b = write(tmp_path / "b", images, cameras, order=lambda xs: xs[::-1])  # rows and cameras in reverse order
    assert capture_version(a) == capture_version(b)
    moved = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(a, moved)
    cam_file = moved / "s1" / "seq" / "cameras.json"  # same calibrations, other key order and layout
    data = json.loads(cam_file.read_text())
    data["cameras"] = dict(reversed(list(data["cameras"].items())))
    cam_file.write_text(json.dumps(data, indent=4, sort_keys=True))
    man = pd.read_parquet(moved / "manifest.parquet").sample(frac=1.0, random_state=1)  # rows shuffled
    man.to_parquet(moved / "manifest.parquet", index=False)
    assert capture_index(moved).version == capture_version(a)


def test_a_capture_written_before_version_ids_gets_the_same_version(tmp_path):
    root = write(tmp_path / "cap", *content())
    stored = capture_version(root)
    info = json.loads((root / "capture.json").read_text())
    del info["version_id"]
    (root / "capture.json").write_text(json.dumps(info))
    man = pd.read_parquet(root / "manifest.parquet").drop(columns=["mask_sha256"])  # masks hashed from the files
    man.to_parquet(root / "manifest.parquet", index=False)
    assert capture_version(root) == stored


@pytest.mark.parametrize("change", ["pixel", "mask", "split", "calibration", "extra_frame"])
def test_any_content_change_changes_the_version(tmp_path, change):
    images, cameras = content()
    base = capture_version(write(tmp_path / "base", images, cameras))
    images2, cameras2, split = dict(images), dict(cameras), "train"
    key = ("s2", "seq", 1, "cam1")
    if change == "pixel":
        img = images[key][0].copy()
        img[3, 4, 0] ^= 1
        images2[key] = (img, images[key][1])
    elif change == "mask":
        images2[key] = (images[key][0], 255 - images[key][1])
    elif change == "split":
        split = lambda k: "val" if k[0] == "s2" else "train"  # noqa: E731
    elif change == "calibration":
        cameras2[("s2", "seq")] = {**cameras[("s2", "seq")], "cam1": cams(f=31.0)["cam1"]}
    else:
        for c in cameras[("s1", "seq")]:
            images2[("s1", "seq", 2, c)] = images[("s1", "seq", 0, c)]
    assert capture_version(write(tmp_path / "new", images2, cameras2, split=split)) != base


def test_diff_lists_added_removed_and_changed_at_each_level(tmp_path):
    images, cameras = content(subjects=("s1", "s2", "s3"))
    old = write(tmp_path / "old", images, cameras)
    new_images = {k: v for k, v in images.items() if k[0] != "s3" and k[:3] != ("s1", "seq", 1)}  # - s3, - frame 1
    for k, v in content(subjects=("s4",), seed=5)[0].items():  # + subject s4
        new_images[k] = v
    img = new_images[("s2", "seq", 0, "cam2")][0].copy()
    img[0, 0] = 255 - img[0, 0]
    new_images[("s2", "seq", 0, "cam2")] = (img, new_images[("s2", "seq", 0, "cam2")][1])  # ~ one image
    new_cameras = {("s1", "seq"): cameras[("s1", "seq")], ("s4", "seq"): cams(),
                   ("s2", "seq"): {**cameras[("s2", "seq")], "cam0": cams(f=29.0)["cam0"]}}
    new = write(tmp_path / "new", new_images, new_cameras)
    d = diff_indexes(capture_index(old), capture_index(new))
    assert d["subjects"] == {"added": ["s4"], "removed": ["s3"], "changed": []}
    assert d["sequences"] == {"added": [], "removed": [], "changed": ["s1/seq", "s2/seq"]}
    assert d["frames"] == {"added": [], "removed": ["s1/seq/00001"], "changed": ["s2/seq/00000 (1 image(s): cam2)"]}
    assert d["cameras"] == {"added": [], "removed": [], "changed": ["s2/seq/cam0 (K)"]}
    assert not d["identical"] and d["old"]["version"] != d["new"]["version"]
    text = format_diff(d)
    assert "  + subject s4" in text and "  - subject s3" in text and "  ~ camera s2/seq/cam0 (K)" in text
    same = diff_indexes(capture_index(old), capture_index(old))
    assert same["identical"] and "identical" in format_diff(same)


def test_diff_reports_added_cameras_without_listing_every_frame(tmp_path):
    images, cameras = content(subjects=("s1",), n_cams=2)
    old = write(tmp_path / "old", images, cameras)
    images3, cameras3 = content(subjects=("s1",), n_cams=3)  # same seed: cam0/cam1 images differ, so rebuild
    new_images = dict(images)
    for f in range(2):
        new_images[("s1", "seq", f, "cam2")] = images3[("s1", "seq", f, "cam2")]
    cameras3 = {("s1", "seq"): {**cameras[("s1", "seq")], "cam2": cameras3[("s1", "seq")]["cam2"]}}
    new = write(tmp_path / "new", new_images, cameras3)
    d = diff_indexes(capture_index(old), capture_index(new))
    assert d["cameras"]["added"] == ["s1/seq/cam2"] and d["frames"] == {"added": [], "removed": [], "changed": []}


def _entry(cx=16.0, t=(0.01, -0.02, 1.5)):
    """A cameras.json entry as the writer stores it: float32 values written as float64 (Camera.to_dict)."""
    w2c = look_at([0.3, 0.1, 1.5], [0, 0, 0]).astype(np.float64)
    w2c[:3, 3] = t
    return Camera(K=intrinsics(30.5, 31.0, cx, 12.25), world_to_cam=w2c, width=32, height=24, dist=[0.01, -0.002, 0, 0],
                  name="c").to_dict()


def _ulps(entry: dict, n: int = 1) -> dict:
    """`entry` with every entry of K, world_to_cam and dist moved by n float32 ulps (structure entries: 0 -> 1e-45 at
    one ulp, 1 -> 1.0000001), what storage and a float32 conversion do."""
    def move(a):
        a = np.asarray(a, np.float32)
        for _ in range(n):
            a = np.nextafter(a, np.float32(np.inf))
        return a.astype(np.float64).tolist()
    return {**entry, **{k: move(entry[k]) for k in ("K", "world_to_cam", "dist")}}


def _edit(key, index, delta):
    def change(entry):
        a = np.array(entry[key], np.float64)
        a[index] += delta
        return {**entry, key: a.tolist()}
    return change


SAME_CAMERA = [  # (id, change of the entry): float32 rounding, not a change
    ("1-ulp-everywhere", _ulps), ("8-ulps-everywhere", lambda e: _ulps(e, 8)),
    ("K[1,0]-rounding", _edit("K", (1, 0), 1e-9)), ("K[2,2]-rounding", _edit("K", (2, 2), 1.2e-7)),
    ("dist-with-k3-zero", lambda e: {**e, "dist": e["dist"] + [0.0]}),
    ("K-as-integers", lambda e: {**e, "K": [[int(v) if v == int(v) else v for v in row] for row in e["K"]]}),
]
CHANGED_CAMERA = [  # (id, change): a real change of the calibration
    ("cx-0.1px", _edit("K", (0, 2), 0.1)), ("fy-0.01px", _edit("K", (1, 1), 0.01)),
    ("tx-0.1mm", _edit("world_to_cam", (0, 3), 1e-4)), ("tz-0.01mm", _edit("world_to_cam", (2, 3), 1e-5)),
    ("rotation-1e-5", _edit("world_to_cam", (0, 1), 1e-5)), ("K[1,0]", _edit("K", (1, 0), 0.01)),
    ("K[2,0]", _edit("K", (2, 0), 1e-3)), ("K[2,2]", _edit("K", (2, 2), 1e-3)),
    ("last-row", _edit("world_to_cam", (3, 2), 1e-3)), ("k1", _edit("dist", 0, 1e-4)),
    ("size", lambda e: {**e, "width": 33}), ("dist-removed", lambda e: {k: v for k, v in e.items() if k != "dist"}),
    ("dist-k3", lambda e: {**e, "dist": e["dist"] + [0.001]}), ("K-nan", _edit("K", (0, 0), np.nan)),
]


@pytest.mark.parametrize("change", [c[1] for c in SAME_CAMERA], ids=[c[0] for c in SAME_CAMERA])
def test_float32_rounding_of_a_calibration_is_no_change(change):
    """The diff compared cameras.json entries exactly: a round trip through another format (VHAP, below) listed
    every camera as changed. Entries within CAMERA_RTOL (1e-6) of their block's largest magnitude are one
    calibration, K's structure entries (K[1, 0], K[2, :]) by the same rule."""
    assert CAMERA_RTOL == 1e-6
    entry = _entry()
    assert same_camera(entry, change(entry)) and same_camera(change(entry), entry)


@pytest.mark.parametrize("change", [c[1] for c in CHANGED_CAMERA], ids=[c[0] for c in CHANGED_CAMERA])
def test_a_real_change_of_a_calibration_is_listed(change):
    entry = _entry()
    assert not same_camera(entry, change(entry)) and not same_camera(change(entry), entry)
    assert same_camera(entry, entry) and same_camera(change(entry), change(entry))


def test_a_rotation_change_is_not_hidden_by_a_large_translation():
    """One scale for the whole world_to_cam let the translation's size set the rotation's tolerance: with a calibration
    in millimetres (t ~ 1000) a 5e-4 rad rotation — 2.5 px at f = 5000 — was "same". Rotation, translation and
    K's rows are each judged against their own largest entry; float32 rounding of each is still no change."""
    entry = _entry(t=(10.0, -20.0, 1500.0))
    turned = _edit("world_to_cam", (0, 1), 5e-4)(entry)
    assert not same_camera(entry, turned) and camera_changes(entry, turned) == ["world_to_cam"]
    assert same_camera(entry, _ulps(entry, 8)) and not same_camera(entry, _edit("world_to_cam", (2, 3), 0.01)(entry))


def test_a_vhap_export_imported_back_has_the_same_cameras(tmp_path):
    """The real round trip: a capture exported as VHAP (`export fits --format vhap`: OpenGL camera→world, cy from the
    bottom) and imported back (`geoface import`, pipelines.transforms_json). Its world_to_cam entries came back up to
    one float32 ulp (5.96e-8) apart and the diff listed all 4 cameras as changed; now none (the frame the export
    leaves out is still listed, and a moved principal point is)."""
    from export_testdata import DIVERGED, SEQUENCE, SUBJECT, make_export_data
    from flame_fitting.formats.export_vhap import export_vhap
    from pipelines.import_config import ImportConfig
    from pipelines.transforms_json import import_capture

    data = make_export_data(tmp_path / "data")
    export_vhap(data.capture, data.fits, tmp_path / "vhap", cameras="capture")
    import_capture(tmp_path / "vhap" / SUBJECT / SEQUENCE, tmp_path / "back",
                   ImportConfig(subject=SUBJECT, sequence=SEQUENCE))
    old, new = capture_index(data.capture), capture_index(tmp_path / "back")
    gap = max(np.abs(np.subtract(c["world_to_cam"], new.cameras[k][n]["world_to_cam"])).max()
              for k, cams in old.cameras.items() for n, c in cams.items())
    assert 0 < gap <= 2 ** -24 and old.cameras != new.cameras  # rounding, as measured
    d = diff_indexes(old, new)
    assert d["cameras"] == {"added": [], "removed": [], "changed": []}
    assert d["frames"]["removed"] == [f"{SUBJECT}/{SEQUENCE}/{DIVERGED:05d}"] and not d["same"]
    cams = json.loads((tmp_path / "back" / SUBJECT / SEQUENCE / "cameras.json").read_text())
    name = sorted(cams["cameras"])[0]
    cams["cameras"][name] = _edit("K", (0, 2), 0.1)(cams["cameras"][name])
    (tmp_path / "back" / SUBJECT / SEQUENCE / "cameras.json").write_text(json.dumps(cams))
    assert diff_indexes(old, capture_index(tmp_path / "back"))["cameras"]["changed"] == [
        f"{SUBJECT}/{SEQUENCE}/{name} (K)"]


def _mixed(k):
    return "val" if k[2] == 1 else "train"  # frame 1 of every subject is val: subjects of mixed splits


def _rows(m, **where):
    sel = np.ones(len(m), bool)
    for col, v in where.items():
        sel &= (m[col] == v).to_numpy()
    return np.flatnonzero(sel)


def _set(col, value, **where):
    def edit(m):
        m.loc[_rows(m, **where), col] = value
        return m
    return edit


def _cam(name, change):
    def edit(cams):
        cams[name] = change(dict(cams[name]))
    return edit


# (id, split of the capture, edit of s1/seq: ("manifest", m -> m) or ("cameras", {name: entry} edited in place),
# what the diff must list). Every input of the version id: an image's hash, its mask's hash, its split, and every key
# of every camera entry; each alone changes the version and is named.
INPUTS = [
    ("image", _mixed, ("manifest", _set("sha256", "0" * 64, frame=0, camera="cam1")),
     "  ~ frame s1/seq/00000 (1 image(s): cam1)"),
    ("mask", _mixed, ("manifest", _set("mask_sha256", "1" * 64, frame=1, camera="cam0")),
     "  ~ frame s1/seq/00001 (1 mask(s): cam0)"),
    ("mask-dropped", _mixed, ("manifest", lambda m: _set("mask_path", None, frame=0, camera="cam2")(
        _set("mask_sha256", "", frame=0, camera="cam2")(m))), "  ~ frame s1/seq/00000 (1 mask(s): cam2)"),
    ("split-one-image-mixed-subject", _mixed, ("manifest", _set("split", "test", frame=0, camera="cam1")),
     "  ~ frame s1/seq/00000 (split train -> test: cam1)"),
    ("split-last-image-mixed-subject", _mixed, ("manifest", _set("split", "test", frame=1, camera="cam2")),
     "  ~ frame s1/seq/00001 (split val -> test: cam2)"),
    ("split-first-image-one-split-subject", "train", ("manifest", _set("split", "val", frame=0, camera="cam0")),
     "  ~ frame s1/seq/00000 (split train -> val: cam0)"),
    ("split-last-image-one-split-subject", "train", ("manifest", _set("split", "val", frame=1, camera="cam2")),
     "  ~ frame s1/seq/00001 (split train -> val: cam2)"),
    ("split-whole-subject", "train", ("manifest", _set("split", "test", subject="s1")),
     "  ~ subject s1 (split train -> test)"),
    ("image-removed", _mixed, ("manifest", lambda m: m.drop(index=_rows(m, subject="s1", frame=1, camera="cam1"))),
     "  ~ frame s1/seq/00001 (1 image(s): cam1)"),
    ("frame-removed", _mixed, ("manifest", lambda m: m.drop(index=_rows(m, subject="s1", frame=1))),
     "  - frame s1/seq/00001"),
    ("K", _mixed, ("cameras", _cam("cam0", _edit("K", (0, 2), 0.1))), "  ~ camera s1/seq/cam0 (K)"),
    ("world_to_cam", _mixed, ("cameras", _cam("cam1", _edit("world_to_cam", (2, 3), 1e-4))),
     "  ~ camera s1/seq/cam1 (world_to_cam)"),
    ("dist-added", _mixed, ("cameras", _cam("cam2", lambda e: {**e, "dist": [0.01, 0, 0, 0]})),
     "  ~ camera s1/seq/cam2 (dist)"),
    ("width-as-float", _mixed, ("cameras", _cam("cam0", lambda e: {**e, "width": float(e["width"])})),
     "  ~ camera s1/seq/cam0 (width)"),
    ("height", _mixed, ("cameras", _cam("cam0", lambda e: {**e, "height": e["height"] + 1})),
     "  ~ camera s1/seq/cam0 (height)"),
    ("extra-key", _mixed, ("cameras", _cam("cam0", lambda e: {**e, "note": "x"})), "  ~ camera s1/seq/cam0 (note)"),
    ("camera-added", _mixed, ("cameras", lambda cams: cams.update(cam9=cams["cam0"])), "  + camera s1/seq/cam9"),
]


@pytest.mark.parametrize("split, edit, line", [c[1:] for c in INPUTS], ids=[c[0] for c in INPUTS])
def test_every_input_of_the_version_is_listed(tmp_path, split, edit, line):
    """A change of any one input of the version id is listed by name and the diff is not `same` (exit status 1).
    The diff took one split per subject (its last image's): one image's split changed in a subject of mixed splits
    listed nothing and was `same` (exit 0) though the versions differed; in a subject of one split it was `same` or
    claimed the whole subject moved. Masks are named as masks, camera changes by key."""
    images, cameras = content()
    old = write(tmp_path / "old", images, cameras, split=split)
    new = tmp_path / "new"
    shutil.copytree(old, new)
    kind, change = edit
    if kind == "manifest":
        m = pd.read_parquet(new / "manifest.parquet")
        s2 = m[m.subject == "s2"]
        m = pd.concat([change(m[m.subject == "s1"].reset_index(drop=True)), s2], ignore_index=True)
        m.to_parquet(new / "manifest.parquet", index=False)
    else:
        path = new / "s1" / "seq" / "cameras.json"
        data = json.loads(path.read_text())
        change(data["cameras"])
        path.write_text(json.dumps(data))
    a, b = capture_index(old), capture_index(new)
    assert a.version != b.version
    d = diff_indexes(a, b)
    text = format_diff(d, limit=0)
    assert not d["same"] and not d["identical"] and not d.get("other"), text
    assert line in text.splitlines(), text
    entries = [x for x in text.splitlines() if x.startswith("  ") and not x.startswith("  ~ sequence ")]
    assert entries == [line], text  # that change only: nothing about s2, no subject-wide split claim


def test_a_content_difference_no_level_names_is_never_same(tmp_path):
    """The guard: versions that differ beyond camera rounding with nothing listed say so (`other`, exit status 1),
    never `same`. No capture read from files reaches it; an index built by hand can (frame 0 and 0.0: one key for
    the diff, two texts for the version id)."""
    from flame_fitting.formats.capture_version import CaptureIndex

    a = capture_index(write(tmp_path / "a", *content(subjects=("s1",))))
    b = CaptureIndex("b", {(s, q, float(f), c): v for (s, q, f, c), v in a.images.items()}, a.cameras)
    d = diff_indexes(a, b)
    assert a.version != b.version and not d["same"] and len(d["other"]) == 1
    assert format_diff(d).splitlines()[-1].startswith("  ~ other: the content differs in a way no level above names")
    rounded = CaptureIndex("r", a.images, {k: {n: {**_ulps({**e, "dist": [1.0]}), "dist": [0.0] * 4}  # + zero dist
                                               for n, e in v.items()} for k, v in a.cameras.items()})
    d = diff_indexes(a, rounded)
    assert a.version != rounded.version and d["same"] and d["other"] == []


@pytest.mark.parametrize("make", ["missing", "file", "empty", "other_json", "no_manifest"])
def test_not_a_capture_is_one_clear_error_naming_the_folder(tmp_path, make):
    root = tmp_path / "thing"
    if make == "file":
        root.write_text("x")
    elif make != "missing":
        root.mkdir()
        if make == "other_json":
            (root / "capture.json").write_text(json.dumps({"format": "something-else"}))
        if make == "no_manifest":
            (root / "capture.json").write_text(json.dumps({"format": "geoface-capture"}))
    with pytest.raises(CaptureError) as e:
        capture_index(root)
    msg = str(e.value)
    assert str(root) in msg and "\n" not in msg
    assert ("not a geoface capture" in msg) or ("manifest.parquet: missing" in msg)


def test_the_code_digest_holds_the_library_versions(monkeypatch, tmp_path):
    """Another MediaPipe or torch gives other landmarks and fits: a unit's key (and the Ray node check) changes with
    the installed versions, not only with geoface's files."""
    from flame_fitting.core import unit_keys

    (tmp_path / "m.py").write_text("x = 1\n")
    before = unit_keys.code_digest(tmp_path)
    assert dict(unit_keys.library_versions())["numpy"] is not None
    monkeypatch.setattr(unit_keys, "library_versions", lambda: (("numpy", "0.0.0"),))
    assert unit_keys.code_digest(tmp_path) != before


def test_diff_text_escapes_what_a_terminal_would_obey(tmp_path):
    # the folders (or git revisions) named on the command line and the captures' names are printed one line each
    images, cameras = content(subjects=("s1",))
    old = write(tmp_path / "old\x1b]0;owned\x07", images, cameras)
    new = write(tmp_path / "new\rforged", images, cameras)
    text = format_diff(diff_indexes(capture_index(old), capture_index(new)))
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    assert "old\\x1b]0;owned\\x07 (capture version" in text and "new\\rforged (capture version" in text
    assert len(text.splitlines()) == 3  # old, new, identical


def _feed_fifo(fifo, data: bytes) -> threading.Thread:
    """A writer that hands `data` to whoever opens the FIFO (the code before refused nothing and read it)."""
    def feed():
        with open(fifo, "wb") as f:
            f.write(data)
    t = threading.Thread(target=feed, daemon=True)
    t.start()
    return t


def _release(fifo, writer: threading.Thread) -> None:
    """Let the writer finish when nobody read the FIFO (the reader refused it)."""
    if writer.is_alive():
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        writer.join()
        os.close(fd)


@pytest.mark.parametrize("damage", ["deep capture.json", "deep cameras.json", "fifo capture.json"])
def test_hostile_json_files_of_a_capture_are_one_error_naming_them(tmp_path, damage):
    """`geoface diff-captures` / `audit` read capture.json and cameras.json through capture_index: JSON nested beyond
    the parser's depth was a RecursionError traceback, and a FIFO (a capture from someone else) was read."""
    root = write(tmp_path / "cap", *content(subjects=("s1",), frames=1, n_cams=2))
    good = (root / "capture.json").read_bytes()
    target = root / ("s1/seq/cameras.json" if "cameras" in damage else "capture.json")
    target.unlink()
    writer = None
    if damage.startswith("fifo"):
        os.mkfifo(target)
        writer = _feed_fifo(target, good)
    else:
        target.write_text("[" * 100_000 + "]" * 100_000)
    try:
        with pytest.raises(CaptureError) as e:
            capture_index(root)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(str(target) if "cameras" in damage or writer else str(root))
        assert ("not a regular file" if writer else "nested too deeply") in msg
        if damage == "deep capture.json":  # the version falls back to the content index, which says why
            with pytest.raises(CaptureError, match="nested too deeply"):
                capture_version(root)
    finally:
        if writer is not None:
            _release(target, writer)


@pytest.mark.parametrize("damage, words", [("deep capture.json", "not valid JSON (nested too deeply)"),
                                           ("deep cameras.json", "not valid JSON (nested too deeply)"),
                                           ("fifo cameras.json", "not a regular file"),
                                           ("huge cameras.json", f"{(64 << 20) + 1} bytes, more than a capture's JSON "
                                                                 f"file holds ({64 << 20})")])
def test_hostile_json_files_of_a_capture_are_one_error_naming_them_when_opened(tmp_path, damage, words):
    """What every stage opens (load_capture, load_cameras): capture.json or cameras.json nested beyond the parser's
    depth was a RecursionError traceback, a FIFO blocked until someone wrote to it (then was read), a file of any size
    was read whole (64 MiB + 1 here; a camera's entry is ~0.6 KB)."""
    root = write(tmp_path / "cap", *content(subjects=("s1",), frames=1, n_cams=2))
    target = root / ("s1/seq/cameras.json" if "cameras" in damage else "capture.json")
    good = target.read_bytes()
    target.unlink()
    writer = None
    if damage.startswith("fifo"):
        os.mkfifo(target)
        writer = _feed_fifo(target, good)
    elif damage.startswith("huge"):
        with open(target, "wb") as f:
            f.truncate((64 << 20) + 1)  # sparse: no disk space
    else:
        target.write_text("[" * 100_000 + "]" * 100_000)
    try:
        with pytest.raises(CaptureError) as e:
            load_capture(root)
        assert str(e.value) == f"{target}: {words}"
    finally:
        if writer is not None:
            _release(target, writer)


@pytest.mark.parametrize("text, words", [("[" * 100_000 + "]" * 100_000, "not valid JSON (nested too deeply)"),
                                         ('{"captures_version": ["a"]}', "captures_version must be text or null"),
                                         ('{"head_model_sha256": 5}', "head_model_sha256 must be text or null"),
                                         ("[1]", "expected a JSON object")])
def test_a_lineage_file_of_the_wrong_shape_names_it(tmp_path, text, words):
    """lineage.json of a stage output from elsewhere: one LineageError naming it (a RecursionError before; a list
    `captures_version` was passed on into the next lineage and the model card)."""
    (tmp_path / "lineage.json").write_text(text)
    with pytest.raises(LineageError) as e:
        read_lineage(tmp_path)
    assert str(e.value).startswith(f"{tmp_path / 'lineage.json'}: ") and words in str(e.value)
    assert read_lineage(tmp_path / "none") == {}
