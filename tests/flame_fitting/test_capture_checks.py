"""What `load_capture` refuses in a capture's manifest and cameras, and with which one-line message: each refusal
the validation makes (a manifest column's names and paths, duplicate rows, splits, a row's camera and size against
its sequence's cameras.json), the first offending value or row reported when there are several, and manifests it
accepts. The messages are the ones the row-by-row validation gave before it worked on whole columns (issue 16 item
1: 15 us a row, ~24 s per stage and run at NeRSemble's 1.6 million images); the checks must keep every one."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flame_fitting.core.fileio import write_json
from flame_fitting.formats.capture import FORMAT, VERSION, CaptureError, load_capture, save_cameras
from flame_fitting.geometry.camera import Camera

SEQS = [("s0", "q0"), ("s0", "q1"), ("s1", "q0")]
CAMS = ["c0", "c1"]
FRAMES = 2


def base_manifest() -> pd.DataFrame:
    rows = [dict(subject=s, sequence=q, frame=f, camera=c, path=f"{s}/{q}/{f:05d}/{c}.png", width=40, height=30,
                 sha256=f"{i:064x}", split="test" if s == "s1" else "train", source="test")
            for i, (s, q, f, c) in enumerate((s, q, f, c) for s, q in SEQS for f in range(FRAMES) for c in CAMS)]
    return pd.DataFrame(rows)


def write_capture(root: Path, m: pd.DataFrame, cams: dict | None = None) -> Path:
    """A capture at `root` without image files: `m` as its manifest, a cameras.json per sequence of `cams`
    ((subject, sequence) -> camera names; SEQS × CAMS by default) at 40×30."""
    K = np.array([[50.0, 0, 20], [0, 50.0, 15], [0, 0, 1]])
    for (s, q), names in (cams or {k: CAMS for k in SEQS}).items():
        (root / s / q).mkdir(parents=True, exist_ok=True)
        save_cameras(root / s / q / "cameras.json", {n: Camera(K, np.eye(4), 40, 30, name=n) for n in names})
    m.to_parquet(root / "manifest.parquet", index=False)
    write_json(root / "capture.json", {"format": FORMAT, "version": VERSION, "source": "test"})
    return root


def _set(col, value, rows=(0,)):
    def change(m):
        m[col] = m[col].astype(object)
        for r in rows:
            m.at[r, col] = value
        return m
    return change


def _column(col, values):
    def change(m):
        m[col] = values
        return m
    return change


def _permuted(change=None):
    def go(m):
        m = m.iloc[np.random.default_rng(3).permutation(len(m))].reset_index(drop=True)
        return change(m) if change else m
    return go


MAN = "{root}/manifest.parquet"
ONE_SPLIT = ("a sequence's images must share one split (its shards hold one split, a sample one frame's views): "
             "split by subject or by sequence")
# (id, change to the base manifest, message); "{root}" is the capture folder
REFUSED = [
    ("subject-int", lambda m: m.assign(subject=m.subject.map({"s0": 10, "s1": 11})),
     f"{MAN}: subject 10 not text (int64)"),
    ("subject-null", _set("subject", None, (5,)), f"{MAN}: subject nan not text (float)"),
    ("subject-empty", _set("subject", "", (2,)), f"{MAN}: subject '' empty"),
    ("subject-separator", _set("subject", "a/b", (2,)),
     f"{MAN}: subject 'a/b' holds a path separator or NUL (a name is one path component)"),
    ("subject-dot", _set("subject", "..", (2,)),
     f"{MAN}: subject '..' starts with '.' ('.', '..' and hidden names are refused)"),
    ("sequence-formula", _set("sequence", "=1+1", (4,)), f"{MAN}: sequence '=1+1' starts with '=' (a spreadsheet "
     "opening the CSV files the toolkit writes would run it as a formula)"),
    ("camera-control", _set("camera", "c\x1b[2J", (3,)), f"{MAN}: camera 'c\\x1b[2J' holds a control, format or "
     "undecodable character (escape sequences, line breaks, bidi overrides, bytes that are not UTF-8)"),
    ("camera-bidi", _set("camera", "c\u202e", (3,)), f"{MAN}: camera 'c\\u202e' holds a control, format or "
     "undecodable character (escape sequences, line breaks, bidi overrides, bytes that are not UTF-8)"),
    ("camera-long", _set("camera", "c" * 129, (3,)), f"{MAN}: camera '{'c' * 129}' longer than 128 bytes in UTF-8 "
     "(129)"),
    ("names-before-paths", lambda m: _set("path", "/etc/passwd", (0,))(_set("camera", "-c", (11,))(m)),
     f"{MAN}: camera '-c' starts with '-' (a spreadsheet opening the CSV files the toolkit writes would run it as a "
     "formula)"),
    ("path-int", _column("path", 3), f"{MAN}: path 3 not text (int64)"),
    ("path-null", _set("path", None, (6,)), f"{MAN}: path of s0/q1/1/c0 is null (every manifest row names its image)"),
    ("path-bytes", lambda m: m.assign(path=m.path.str.encode("utf-8")),
     f"{MAN}: path b's0/q0/00000/c0.png' not text (bytes)"),
    ("path-absolute", _set("path", "/etc/passwd", (6,)),
     f"{MAN}: path '/etc/passwd' an absolute path (paths are relative to the capture)"),
    ("path-drive", _set("path", "C:/x.png", (6,)),
     f"{MAN}: path 'C:/x.png' an absolute path (paths are relative to the capture)"),
    ("path-parent", _set("path", "s0/../../x.png", (6,)),
     f"{MAN}: path 's0/../../x.png' leaves its folder or has empty parts ('..', '.', '//')"),
    ("path-only-parent", _set("path", "..", (6,)), f"{MAN}: path '..' leaves its folder or has empty parts ('..', "
     "'.', '//')"),
    ("path-dot", _set("path", "./s0/x.png", (6,)),
     f"{MAN}: path './s0/x.png' leaves its folder or has empty parts ('..', '.', '//')"),
    ("path-double-slash", _set("path", "s0//x.png", (6,)),
     f"{MAN}: path 's0//x.png' leaves its folder or has empty parts ('..', '.', '//')"),
    ("path-trailing-slash", _set("path", "s0/x/", (6,)),
     f"{MAN}: path 's0/x/' leaves its folder or has empty parts ('..', '.', '//')"),
    ("path-empty", _set("path", "", (6,)), f"{MAN}: path '' empty, or holds a backslash or NUL"),
    ("path-backslash", _set("path", "s0\\x.png", (6,)),
     f"{MAN}: path 's0\\\\x.png' empty, or holds a backslash or NUL"),
    ("path-nul", _set("path", "s0/x\0.png", (6,)), f"{MAN}: path 's0/x\\x00.png' empty, or holds a backslash or NUL"),
    ("path-control", _set("path", "s0/\x1b[2J.png", (6,)), f"{MAN}: path 's0/\\x1b[2J.png' holds a control, format or "
     "undecodable character (escape sequences, line breaks, bytes not UTF-8)"),
    ("path-format", _set("path", "s0/a\u200b.png", (6,)), f"{MAN}: path 's0/a\\u200b.png' holds a control, format or "
     "undecodable character (escape sequences, line breaks, bytes not UTF-8)"),
    ("path-line-separator", _set("path", "s0/a\u2028.png", (6,)), f"{MAN}: path 's0/a\\u2028.png' holds a control, "
     "format or undecodable character (escape sequences, line breaks, bytes not UTF-8)"),
    ("path-control-and-parent", _set("path", "../\x07", (6,)), f"{MAN}: path '../\\x07' holds a control, format or "
     "undecodable character (escape sequences, line breaks, bytes not UTF-8)"),
    ("path-first-of-two", lambda m: _set("path", "../b.png", (7,))(_set("path", "/a.png", (8, 2))(m)),
     f"{MAN}: path '/a.png' an absolute path (paths are relative to the capture)"),
    ("path-first-in-manifest-order", _permuted(_set("path", "x/../../y.png", (9,))),
     f"{MAN}: path 'x/../../y.png' leaves its folder or has empty parts ('..', '.', '//')"),
    ("mask-path", lambda m: m.assign(mask_path=[None] * 5 + ["s0/../../m.png"] + [None] * (len(m) - 6)),
     f"{MAN}: mask_path 's0/../../m.png' leaves its folder or has empty parts ('..', '.', '//')"),
    ("gt-path-after-path", lambda m: _set("path", "//p.png", (9,))(m.assign(gt_path="/gt.npz")),
     f"{MAN}: path '//p.png' an absolute path (paths are relative to the capture)"),
    ("gt-path", lambda m: m.assign(gt_path="/gt.npz"), f"{MAN}: gt_path '/gt.npz' an absolute path (paths are "
     "relative to the capture)"),
    ("missing-columns", lambda m: m.drop(columns=["split", "sha256"]), f"{MAN}: missing columns ['sha256', 'split']"),
    ("duplicate-row", lambda m: pd.concat([m, m.iloc[[7, 3]]], ignore_index=True),
     f"{MAN}: duplicate row for s0/q1/1/c1"),
    ("unknown-split", _set("split", "holdout", (1, 4)), f"{MAN}: unknown split values ['holdout']"),
    ("unknown-splits", lambda m: _set("split", "Train", (9,))(_set("split", "dev", (1,))(m)),
     f"{MAN}: unknown split values ['Train', 'dev']"),
    ("null-split", _set("split", None, (1,)), f"{MAN}: unknown split values [nan]"),
    ("null-and-unknown-split", lambda m: _set("split", "dev", (4,))(_set("split", None, (1,))(m)),
     f"{MAN}: unknown split values ['dev', nan]"),
    ("split-mixed-in-frame", _set("split", "val", (5,)), f"{MAN}: sequence s0/q1 mixes splits: frame 0 camera c0 is "
     f"'train' but frame 0 camera c1 is 'val'; {ONE_SPLIT}"),
    ("split-mixed-in-sequence", _set("split", "test", (6, 7)), f"{MAN}: sequence s0/q1 mixes splits: frame 0 camera "
     f"c0 is 'train' but frame 1 camera c0 is 'test'; {ONE_SPLIT}"),
    ("split-first-sequence-in-manifest-order", lambda m: _set("split", "val", (9,))(_set("split", "val", (0,))(
        m.iloc[::-1].reset_index(drop=True))), f"{MAN}: sequence s1/q0 mixes splits: frame 1 camera c1 is 'val' but "
     f"frame 1 camera c0 is 'test'; {ONE_SPLIT}"),  # s1/q0 comes first in this manifest, s0/q0 in sorted order
    ("split-frame-given-another-subject", lambda m: _set("frame", 2, (8, 9))(_set("subject", "s0", (8, 9))(m)),
     f"{MAN}: sequence s0/q0 mixes splits: frame 0 camera c0 is 'train' but frame 2 camera c0 is 'test'; {ONE_SPLIT}"),
    ("names-before-mixed-splits", lambda m: _set("split", "val", (1,))(_set("camera", "-c", (11,))(m)),
     f"{MAN}: camera '-c' starts with '-' (a spreadsheet opening the CSV files the toolkit writes would run it as a "
     "formula)"),
    ("mixed-splits-before-cameras", lambda m: _set("split", "val", (11,))(_set("width", 39, (1,))(m)),
     f"{MAN}: sequence s1/q0 mixes splits: frame 0 camera c0 is 'test' but frame 1 camera c1 is 'val'; {ONE_SPLIT}"),
    ("camera-not-in-cameras", _set("camera", "c9", (5,)),
     "{root}/s0/q1/00000/c1.png: camera 'c9' is not in {root}/s0/q1/cameras.json"),
    ("size-differs", _set("width", 41, (10,)), "{root}/s1/q0/00001/c0.png: manifest size 41×30 differs from camera "
     "'c0' (40×30) in {root}/s1/q0/cameras.json"),
    ("height-differs", _set("height", 29, (10,)), "{root}/s1/q0/00001/c0.png: manifest size 40×29 differs from "
     "camera 'c0' (40×30) in {root}/s1/q0/cameras.json"),
    ("size-null", lambda m: m.assign(width=[40.0] * 9 + [np.nan] + [40.0] * (len(m) - 10)),
     "{root}/s1/q0/00000/c1.png: manifest size nan×30 differs from camera 'c1' (40×30) in {root}/s1/q0/cameras.json"),
    ("size-text", _column("height", "30"), "{root}/s0/q0/00000/c0.png: manifest size 40×30 differs from camera 'c0' "
     "(40×30) in {root}/s0/q0/cameras.json"),
    ("first-row-of-a-sequence", lambda m: _set("camera", "c7", (7,))(_set("width", 39, (6,))(m)),
     "{root}/s0/q1/00001/c0.png: manifest size 39×30 differs from camera 'c0' (40×30) in {root}/s0/q1/cameras.json"),
    ("first-sequence-in-sorted-order", lambda m: _set("width", 39, (1,))(_set("camera", "c7", (9,))(
        m.iloc[::-1].reset_index(drop=True))),
     "{root}/s0/q0/00001/c0.png: camera 'c7' is not in {root}/s0/q0/cameras.json"),
]

# a change to the cameras files (after the base capture is written) and the message
CAMERA_FILES = [
    ("cameras-missing", lambda root: os.remove(root / "s0/q1/cameras.json"),
     "{root}/s0/q1/cameras.json: cameras file is missing"),
    ("cameras-not-json", lambda root: (root / "s0/q1/cameras.json").write_text("{"),
     "{root}/s0/q1/cameras.json: not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 "
     "(char 1))"),
    ("cameras-a-list", lambda root: (root / "s1/q0/cameras.json").write_text("[]"),
     "{root}/s1/q0/cameras.json: expected a JSON object, got a list"),
    ("cameras-convention", lambda root: _edit(root / "s1/q0/cameras.json", convention="opengl"),
     "{root}/s1/q0/cameras.json: convention must be 'opencv', got 'opengl'"),
    ("cameras-empty", lambda root: _edit(root / "s1/q0/cameras.json", cameras={}),
     "{root}/s1/q0/cameras.json: no 'cameras' mapping"),
    ("camera-name", lambda root: _edit(root / "s1/q0/cameras.json", cameras={"../x": {}}),
     "{root}/s1/q0/cameras.json: camera name '../x' holds a path separator or NUL (a name is one path component)"),
]


def _edit(path: Path, **items) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **items}))


def _message(text: str, root: Path) -> str:
    return text.replace("{root}", str(root))


@pytest.mark.parametrize("change,message", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_a_bad_manifest_is_refused_naming_the_first_offending_value(tmp_path, change, message):
    root = write_capture(tmp_path / "cap", change(base_manifest()))
    with pytest.raises(CaptureError) as e:
        load_capture(root, check_files=False)
    assert str(e.value) == _message(message, root)


@pytest.mark.parametrize("change,message", [c[1:] for c in CAMERA_FILES], ids=[c[0] for c in CAMERA_FILES])
def test_a_bad_cameras_file_is_refused_naming_it(tmp_path, change, message):
    root = write_capture(tmp_path / "cap", base_manifest())
    change(root)
    with pytest.raises(CaptureError) as e:
        load_capture(root, check_files=False)
    assert str(e.value) == _message(message, root)


def test_a_bad_row_in_an_earlier_sequence_is_reported_before_a_later_bad_cameras_file(tmp_path):
    m = _set("width", 39, (5,))(base_manifest())  # s0/q1; the cameras file of s1/q0 is missing
    root = write_capture(tmp_path / "cap", m, cams={("s0", "q0"): CAMS, ("s0", "q1"): CAMS})
    with pytest.raises(CaptureError, match="manifest size 39×30 differs"):
        load_capture(root, check_files=False)
    m = _set("width", 39, (9,))(base_manifest())  # s1/q0; the cameras file of s0/q1 is missing
    root = write_capture(tmp_path / "cap2", m, cams={("s0", "q0"): CAMS, ("s1", "q0"): CAMS})
    with pytest.raises(CaptureError) as e:
        load_capture(root, check_files=False)
    assert str(e.value) == f"{root}/s0/q1/cameras.json: cameras file is missing"


def test_a_sequence_missing_one_camera_refuses_only_its_rows(tmp_path):
    cams = {("s0", "q0"): CAMS, ("s0", "q1"): ["c0"], ("s1", "q0"): CAMS}
    root = write_capture(tmp_path / "cap", base_manifest(), cams=cams)
    with pytest.raises(CaptureError) as e:
        load_capture(root, check_files=False)
    assert str(e.value) == f"{root}/s0/q1/00000/c1.png: camera 'c1' is not in {root}/s0/q1/cameras.json"


@pytest.mark.skipif(sys.platform != "linux", reason="a folder name that is not UTF-8")
def test_a_capture_folder_whose_path_is_not_utf8_is_refused(tmp_path):
    write_capture(tmp_path / "cafe", base_manifest())
    os.rename(bytes(tmp_path / "cafe"), bytes(tmp_path) + b"/caf\xe9")
    root = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9"))
    with pytest.raises(CaptureError) as e:
        load_capture(root, check_files=False)
    assert str(e.value) == (f"{tmp_path}/caf\\udce9: the capture folder's path holds bytes that are not UTF-8, which "
                            "OpenCV cannot open; rename it")


@pytest.mark.parametrize("what,message", [
    ("no-capture-json", "{root}/capture.json: missing (is {root} a geoface capture? a dataset in another layout is "
     "imported first: `geoface import SOURCE {root} --out CAPTURE`, docs/sources.md)"),
    ("capture-json-list", "{root}/capture.json: expected a JSON object, got a list"),
    ("capture-json-format", "{root}/capture.json: format is 'other', expected 'geoface-capture'"),
    ("no-manifest", "{root}/manifest.parquet: missing"),
    ("manifest-not-parquet", "{root}/manifest.parquet: not a readable parquet table (ArrowInvalid: Parquet magic "
     "bytes not found in footer. Either the file is corrupted or this is not a parquet file.)"),
])
def test_a_capture_without_its_files_is_refused(tmp_path, what, message):
    root = write_capture(tmp_path / "cap", base_manifest())
    if what == "no-capture-json":
        os.remove(root / "capture.json")
    elif what == "capture-json-list":
        (root / "capture.json").write_text("[1]")
    elif what == "capture-json-format":
        write_json(root / "capture.json", {"format": "other"})
    elif what == "no-manifest":
        os.remove(root / "manifest.parquet")
    else:
        (root / "manifest.parquet").write_bytes(b"PAR1 not a table")
    with pytest.raises(CaptureError) as e:
        load_capture(root, check_files=False)
    assert str(e.value) == _message(message, root)


ACCEPTED = [
    ("base", lambda m: m, None),
    ("permuted", _permuted(), None),
    ("no-rows", lambda m: m.iloc[:0], None),
    ("unicode-names", lambda m: m.replace({"s0": "Jos\u00e9", "q1": "\u5f20 \u4e09", "c1": "cam@2"}).assign(
        path=lambda d: d.subject + "/" + d.sequence + "/" + d.frame.map("{:05d}".format) + "/" + d.camera + ".png"),
     {k: ["c0", "cam@2"] for k in [("Jos\u00e9", "q0"), ("Jos\u00e9", "\u5f20 \u4e09"), ("s1", "q0")]}),
    ("names-with-dots-and-signs", lambda m: m.assign(path=m.path.str.replace(".png", ".a-b+c=d.png")), None),
    ("masks-on-some-images", lambda m: m.assign(mask_path=[None, "s0/q0/00000/masks/c1.png"] * (len(m) // 2),
                                                gt_path=[None] * len(m)), None),
    ("masks-on-no-image", lambda m: m.assign(mask_path=None), None),
    ("extra-columns", lambda m: m.assign(expression=np.arange(len(m)) * 0.5, note="x"), None),
    ("float-sizes", lambda m: m.assign(width=m.width.astype(float), height=m.height.astype(np.int32)), None),
    ("splits-per-sequence", lambda m: m.assign(split=np.where((m.subject == "s0") & (m.sequence == "q1"), "val",
                                                              m.split)), None),  # a held-out sequence of s0
    ("splits-per-sequence-permuted", _permuted(lambda m: m.assign(split=np.where(m.sequence == "q0", "test", "val"))),
     None),
    ("one-sequence-with-more-cameras", lambda m: m, {("s0", "q0"): CAMS + ["c2"], ("s0", "q1"): CAMS,
                                                     ("s1", "q0"): ["c1", "c0"]}),
]


@pytest.mark.parametrize("change,cams", [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_a_good_manifest_is_accepted_as_written(tmp_path, change, cams):
    m = change(base_manifest())
    root = write_capture(tmp_path / "cap", m, cams)
    cap = load_capture(root, check_files=False)  # its rows in canonical order, whatever the file's (capture_order.py)
    pd.testing.assert_frame_equal(cap.manifest, pd.read_parquet(root / "manifest.parquet").sort_values(
        ["subject", "sequence", "frame", "camera"]).reset_index(drop=True))
    assert len(cap.manifest) == len(m) and sorted(cap.sequences()) == sorted(set(zip(m.subject, m.sequence)))


def reference_checks(root: Path) -> None:
    """The row-by-row validation `load_capture` made before it worked on whole columns (names, paths, splits, each
    row's camera and size), restated as the slow reference of the column checks; and the rule it did not have, that a
    sequence's images share one split (2026-12-07)."""
    from flame_fitting.core.names import name_problem, relpath_problem
    from flame_fitting.formats.capture_splits import SPLITS
    from flame_fitting.formats.capture_checks import load_cameras

    man = root / "manifest.parquet"
    df = pd.read_parquet(man)
    if df.duplicated(["subject", "sequence", "frame", "camera"]).any():
        dup = df[df.duplicated(["subject", "sequence", "frame", "camera"])].iloc[0]
        raise CaptureError(f"{man}: duplicate row for {dup.subject}/{dup.sequence}/{dup.frame}/{dup.camera}")
    if set(df.split) - set(SPLITS):
        raise CaptureError(f"{man}: unknown split values {sorted(set(df.split) - set(SPLITS))}")
    for col, problem in [("subject", name_problem), ("sequence", name_problem), ("camera", name_problem),
                         ("path", relpath_problem), ("mask_path", relpath_problem), ("gt_path", relpath_problem)]:
        for value in (df[col].dropna() if problem is relpath_problem else df[col]).unique() if col in df else ():
            if problem(value):
                raise CaptureError(f"{man}: {col} {value!r} {problem(value)}")
    first = {}
    for row in df.itertuples():
        ref = first.setdefault((row.subject, row.sequence), row)
        if ref.split != row.split:
            raise CaptureError(f"{man}: sequence {row.subject}/{row.sequence} mixes splits: frame {ref.frame} camera "
                               f"{ref.camera} is {ref.split!r} but frame {row.frame} camera {row.camera} is "
                               f"{row.split!r}; a sequence's images must share one split (its shards hold one split, "
                               "a sample one frame's views): split by subject or by sequence")
    for (subject, sequence), group in df.groupby(["subject", "sequence"]):
        cam_file = root / subject / sequence / "cameras.json"
        cams = load_cameras(cam_file)
        for row in group.itertuples():
            cam = cams.get(row.camera)
            if cam is None:
                raise CaptureError(f"{root / row.path}: camera {row.camera!r} is not in {cam_file}")
            if (cam.width, cam.height) != (row.width, row.height):
                raise CaptureError(f"{root / row.path}: manifest size {row.width}×{row.height} differs from camera "
                                   f"{row.camera!r} ({cam.width}×{cam.height}) in {cam_file}")


def _outcome(load, root: Path) -> str | None:
    try:
        load(root)
    except CaptureError as e:
        return str(e)
    return None


POOL = {"path": ["/a.png", "a/../../b.png", "a//b.png", "a/./b.png", "a\\b.png", "a/\x1b.png", "a/\u202e.png",
                 "C:a.png", "\u00e9:/b.png", "x/y.png", "s0/q0/00000/c0.png", "Jos\u00e9/\u5f20.png", "a/b:c.png"],
        "camera": ["c9", "c0", "c1", "-c", "c\x07"], "subject": ["s9", "s0", "s1", "", "a/b"],
        "sequence": ["q0", "q1", "q9", ".."], "width": [39, 40, 41], "height": [29, 30], "split": ["val", "dev"]}


@pytest.mark.parametrize("seed", range(120))
def test_the_checks_refuse_what_the_row_by_row_reference_refuses_with_its_message(tmp_path, seed):
    rng = np.random.default_rng(seed)
    m = base_manifest()
    for _ in range(rng.integers(0, 4)):
        col = rng.choice(sorted(POOL) + ["mask_path"])
        if col == "mask_path":
            m["mask_path"] = rng.choice(np.array(POOL["path"] + [None] * 10, dtype=object), len(m))
        else:
            m = _set(col, rng.choice(np.array(POOL[col], dtype=object)), rng.integers(0, len(m), rng.integers(1, 3)))(m)
            m[col] = m[col].astype(type(POOL[col][0]))
    if rng.random() < 0.5:
        m = _permuted()(m)
    if rng.random() < 0.2:
        m["width"] = m["width"].astype(float)
    root = write_capture(tmp_path / "cap", m)
    if rng.random() < 0.2:
        os.remove(root / "s0/q1/cameras.json")
    assert _outcome(lambda r: load_capture(r, check_files=False), root) == _outcome(reference_checks, root)


def _renamed(col: str, old: str, new: str, where: dict | None = None):
    """The rows whose `col` is `old` (and whose other columns match `where`) renamed `new`, their paths with them:
    a capture another tool wrote consistently under the twin name (each sequence's cameras.json by `_cams`)."""
    def change(m):
        rows = (m[col] == old) & np.logical_and.reduce([m[k] == v for k, v in (where or {}).items()] or [True])
        m.loc[rows, col] = new
        m["path"] = [f"{s}/{q}/{f:05d}/{c}.png" for s, q, f, c in zip(m.subject, m.sequence, m.frame, m.camera)]
        return m
    return change


def _cams(m: pd.DataFrame) -> dict:
    return {k: sorted(g.camera.unique()) for k, g in m.groupby(["subject", "sequence"])}


TWINS = [  # (id, change, message): names one folder or file on macOS and Windows
    ("subject-case", _renamed("subject", "s1", "S0"),
     f"{MAN}: subject 'S0' differs from subject 's0' only by case or Unicode normalisation (one folder on macOS and "
     "Windows)"),
    ("subject-nfd", lambda m: _renamed("subject", "s1", "Jose\u0301")(_renamed("subject", "s0", "Jos\u00e9")(m)),
     f"{MAN}: subject {'Jose' + chr(0x301)!r} differs from subject 'Jos\u00e9' only by case or Unicode normalisation "
     "(one folder on macOS and Windows)"),
    ("subject-casefold", lambda m: _renamed("subject", "s1", "STRASSE")(_renamed("subject", "s0", "Stra\u00dfe")(m)),
     f"{MAN}: subject 'STRASSE' differs from subject 'Stra\u00dfe' only by case or Unicode normalisation (one folder "
     "on macOS and Windows)"),
    ("sequence-case", _renamed("sequence", "q1", "Q0", {"subject": "s0"}),
     f"{MAN}: sequence 'Q0' of s0 differs from sequence 'q0' only by case or Unicode normalisation (one folder on "
     "macOS and Windows)"),
    ("camera-case", _renamed("camera", "c1", "C0", {"subject": "s1"}),
     f"{MAN}: camera 'C0' of s1/q0 differs from camera 'c0' only by case or Unicode normalisation (one file on macOS "
     "and Windows)"),
    ("first-in-manifest-order", lambda m: _renamed("camera", "c1", "C0", {"subject": "s1"})(m).iloc[::-1]
     .reset_index(drop=True),
     f"{MAN}: camera 'c0' of s1/q0 differs from camera 'C0' only by case or Unicode normalisation (one file on macOS "
     "and Windows)"),
    ("subject-before-camera", lambda m: _renamed("camera", "c1", "C0", {"subject": "s0", "sequence": "q0"})(
        _renamed("subject", "s1", "S0")(m)),
     f"{MAN}: subject 'S0' differs from subject 's0' only by case or Unicode normalisation (one folder on macOS and "
     "Windows)"),
]
NOT_TWINS = [  # the same folded name in different folders: no collision anywhere
    ("sequence-of-another-subject", _renamed("sequence", "q0", "Q1", {"subject": "s1"})),
    ("camera-of-another-sequence", lambda m: _renamed("camera", "c0", "CAM", {"subject": "s1"})(
        _renamed("camera", "c0", "cam", {"subject": "s0"})(m))),
    ("accent-is-not-case", lambda m: _renamed("subject", "s1", "so")(_renamed("subject", "s0", "s\u00f6")(m))),
]


@pytest.mark.parametrize("change,message", [c[1:] for c in TWINS], ids=[c[0] for c in TWINS])
def test_names_that_differ_only_by_case_or_normalisation_are_refused(tmp_path, change, message):
    """A capture written elsewhere whose subjects (sequences of a subject, cameras of a sequence) differ only by case
    or Unicode normalisation: Linux reads two folders or files, macOS and Windows check out one. `geoface import`
    skips such a name (pipelines/common.py); load_capture read it. Refused, naming both names and the manifest."""
    m = change(base_manifest())
    root = write_capture(tmp_path / "cap", m, cams=_cams(m))
    with pytest.raises(CaptureError) as e:
        load_capture(root, check_files=False)
    assert str(e.value) == _message(message, root)


@pytest.mark.parametrize("change", [c[1] for c in NOT_TWINS], ids=[c[0] for c in NOT_TWINS])
def test_the_same_folded_name_in_different_folders_is_accepted(tmp_path, change):
    m = change(base_manifest())
    cap = load_capture(write_capture(tmp_path / "cap", m, cams=_cams(m)), check_files=False)
    assert len(cap.manifest) == len(m) and set(cap.manifest.subject) == set(m.subject)


def _write_real(root: Path, names: list[tuple[str, str, str]]):
    """A capture written by the real writer, images and all: one frame of each (subject, sequence, camera)."""
    from flame_fitting.formats.capture import CaptureWriter
    from flame_fitting.geometry.camera import intrinsics, look_at

    cam = Camera(intrinsics(20, 20, 8, 6), look_at([0, 0, 2], [0, 0, 0]), 16, 12)
    with CaptureWriter(root, source="another tool") as w:
        for s, q in dict.fromkeys((s, q) for s, q, _ in names):
            w.set_cameras(s, q, {c: cam for s2, q2, c in names if (s2, q2) == (s, q)})
        for s, q, c in names:
            w.add_image(s, q, 0, c, np.full((12, 16, 3), 7, np.uint8))
    return root


WRITER_TWINS = [  # (id, names in the order written, the file named, message)
    ("camera", [("s0", "seq", "cam"), ("s0", "seq", "Cam")], "s0/seq/00000/Cam.png",
     "camera 'Cam' of s0/seq differs from camera 'cam' only by case or Unicode normalisation (one file on macOS and "
     "Windows)"),
    ("subject", [("Jos\u00e9", "seq", "c"), ("Jose\u0301", "seq", "c")], "Jose\u0301/seq/cameras.json",
     f"subject {'Jose' + chr(0x301)!r} differs from subject 'Jos\u00e9' only by case or Unicode normalisation (one "
     "folder on macOS and Windows)"),
    ("sequence", [("s0", "Stra\u00dfe", "c"), ("s0", "STRASSE", "c")], "s0/STRASSE/cameras.json",
     "sequence 'STRASSE' of s0 differs from sequence 'Stra\u00dfe' only by case or Unicode normalisation (one folder "
     "on macOS and Windows)"),
]


@pytest.mark.parametrize("names,file,message", [c[1:] for c in WRITER_TWINS], ids=[c[0] for c in WRITER_TWINS])
def test_capture_writer_refuses_twins_before_writing_them(tmp_path, names, file, message):
    """`CaptureWriter` (every importer's writer) checked each name on its own, not against the others: it wrote a
    capture of 'cam' and 'Cam' that load_capture then refused (and on macOS the second image overwrote the first).
    Now refused when the twin is set or added, naming the file and both names; nothing is written."""
    with pytest.raises(CaptureError) as e:
        _write_real(tmp_path / "cap", names)
    assert str(e.value) == f"{tmp_path / 'cap' / file}: {message}"
    assert list(tmp_path.iterdir()) == []  # the temporary is removed, no capture


def test_capture_writer_keeps_the_same_folded_name_in_different_folders(tmp_path):
    names = [("s0", "seq", "cam"), ("s1", "seq", "Cam"), ("s1", "q2", "cam"), ("s0", "Q2", "CAM")]
    cap = load_capture(_write_real(tmp_path / "cap", names))
    assert sorted(zip(cap.manifest.subject, cap.manifest.sequence, cap.manifest.camera)) == sorted(names)


@pytest.mark.parametrize("change,message", [c[1:] for c in TWINS], ids=[c[0] for c in TWINS])
def test_the_content_index_refuses_what_load_capture_refuses_as_twins(tmp_path, change, message):
    """`read_index` (the version id of a capture without a recorded one, `geoface diff-captures` of folders and of
    git revisions) gave a twin capture a version and diffed it; now the same refusal as load_capture's."""
    from flame_fitting.formats.capture import capture_index

    m = change(base_manifest())
    root = write_capture(tmp_path / "cap", m, cams=_cams(m))
    with pytest.raises(CaptureError) as e:
        capture_index(root)
    assert str(e.value) == _message(message, root)


def _paths(*pairs):
    """Hand-written paths outside the standard layout: {row: path} (and {row: mask path} for "mask:ROW")."""
    def change(m):
        m["mask_path"] = None
        for row, value in pairs:
            col, row = ("mask_path", int(row[5:])) if isinstance(row, str) else ("path", row)
            m.loc[row, col] = value
        return m
    return change


PATH_TWINS = [  # (id, change, message): two rows' files one file on macOS and Windows
    ("path-case", _paths((0, "img/A.png"), (5, "img/a.png")),
     f"{MAN}: path 'img/a.png' differs from path 'img/A.png' only by case or Unicode normalisation (one file on "
     "macOS and Windows)"),
    ("path-folder-nfd", _paths((1, "Jos\u00e9/x.png"), (2, "Jose\u0301/x.png")),
     f"{MAN}: path {'Jose' + chr(0x301) + '/x.png'!r} differs from path 'Jos\u00e9/x.png' only by case or Unicode "
     "normalisation (one file on macOS and Windows)"),
    ("mask-against-image", _paths((3, "all/Q.png"), ("mask:7", "all/q.png")),
     f"{MAN}: mask_path 'all/q.png' differs from path 'all/Q.png' only by case or Unicode normalisation (one file on "
     "macOS and Windows)"),
]
PATH_NOT_TWINS = [
    ("same-name-other-folder", _paths((0, "a/X.png"), (5, "b/x.png"))),
    ("one-mask-for-two-images", _paths(("mask:0", "m/one.png"), ("mask:1", "m/one.png"))),
]


@pytest.mark.parametrize("change,message", [c[1:] for c in PATH_TWINS], ids=[c[0] for c in PATH_TWINS])
def test_paths_outside_the_standard_layout_that_are_twins_are_refused(tmp_path, change, message):
    """A hand-written manifest's `path` / `mask_path` need not follow the layout whose names the twin rule keyed:
    two rows' different paths that differ only by case or Unicode normalisation were read (two files on Linux, one
    on macOS and Windows). Refused by load_capture and by the content index, naming both paths."""
    from flame_fitting.formats.capture import capture_index

    root = write_capture(tmp_path / "cap", change(base_manifest()))
    for load in (lambda r: load_capture(r, check_files=False), capture_index):
        with pytest.raises(CaptureError) as e:
            load(root)
        assert str(e.value) == _message(message, root)


@pytest.mark.parametrize("change", [c[1] for c in PATH_NOT_TWINS], ids=[c[0] for c in PATH_NOT_TWINS])
def test_paths_that_are_no_twins_are_accepted(tmp_path, change):
    m = change(base_manifest())
    assert len(load_capture(write_capture(tmp_path / "cap", m), check_files=False).manifest) == len(m)
