"""Canonical capture format: write/read round trip, atomicity, validation errors naming the file."""
import json

import numpy as np
import pandas as pd
import pytest

from flame_fitting.geometry.camera import Camera, intrinsics, look_at
from flame_fitting.formats.capture import CaptureError, CaptureWriter, load_capture


def cams(n=3, w=64, h=48):
    return {f"cam{i}": Camera(K=intrinsics(60, 60, w / 2, h / 2), world_to_cam=look_at([np.sin(i), 0, np.cos(i)], [0, 0, 0]),
                              width=w, height=h, name=f"cam{i}") for i in range(n)}


def write_small(root, n_frames=2):
    rng = np.random.default_rng(0)
    images = {}
    with CaptureWriter(root, source="test", info={"note": "unit test"}) as w:
        c = cams()
        w.set_cameras("s1", "seq", c)
        for f in range(n_frames):
            for name in c:
                img = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
                images[(f, name)] = img
                w.add_image("s1", "seq", f, name, img, split="val", mask=(img[..., 0] > 128).astype(np.uint8) * 255)
    return images


def test_roundtrip(tmp_path):
    root = tmp_path / "cap"
    images = write_small(root)
    cap = load_capture(root, check_hashes=True)
    assert len(cap.manifest) == 6 and set(cap.manifest.split) == {"val"}
    assert cap.sequences() == [("s1", "seq")] and cap.frames("s1", "seq") == [0, 1]
    for row in cap.manifest.to_dict("records"):
        np.testing.assert_array_equal(cap.image(row), images[(row["frame"], row["camera"])])
    c = cap.cameras("s1", "seq")
    for name, cam in cams().items():
        np.testing.assert_array_equal(c[name].world_to_cam, cam.world_to_cam)
    assert not list(tmp_path.glob(".cap.tmp-*"))  # no temporary left behind


@pytest.mark.parametrize("frame,camera", [(0, "cam2"), (1, "cam0")], ids=["same-frame", "next-frame"])
def test_writer_refuses_an_image_of_another_split_than_its_sequence(tmp_path, frame, camera):
    """A sequence's images share one split (its shards hold one split, a sample one frame's views): the writer
    refused nothing and wrote a capture whose frame, or one view of it, was in another split than the rest of its
    sequence, which the dataset stage then wrote with its sequence's first split. A subject's sequences may differ
    (a held-out sequence)."""
    rng, c = np.random.default_rng(0), cams()
    img = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    with pytest.raises(CaptureError) as e:
        with CaptureWriter(tmp_path / "cap", source="test") as w:
            for seq, split in (("a", "train"), ("b", "test")):
                w.set_cameras("s1", seq, c)
                for f, name in [(0, "cam0"), (0, "cam1")]:
                    w.add_image("s1", seq, f, name, img, split=split)
            w.add_image("s1", "a", frame, camera, img, split="val")
    assert str(e.value) == (
        f"{tmp_path}/cap/s1/a/{frame:05d}/{camera}.png: split 'val' differs from the split 'train' of the images of "
        "s1/a added before; a sequence's images must share one split (its shards hold one split, a sample one frame's "
        "views): split by subject or by sequence")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written
    with CaptureWriter(tmp_path / "ok", source="test") as w:
        for seq, split in (("a", "train"), ("b", "test")):
            w.set_cameras("s1", seq, c)
            w.add_image("s1", seq, 0, "cam0", img, split=split)
    m = load_capture(tmp_path / "ok").manifest
    assert dict(zip(m.sequence, m.split)) == {"a": "train", "b": "test"}


def test_interrupted_write_leaves_nothing(tmp_path):
    root = tmp_path / "cap"
    with pytest.raises(RuntimeError):
        with CaptureWriter(root, source="test") as w:
            w.set_cameras("s1", "seq", cams())
            w.add_image("s1", "seq", 0, "cam0", np.zeros((48, 64, 3), np.uint8))
            raise RuntimeError("killed")
    assert not root.exists() and not list(tmp_path.iterdir())


def test_writer_refuses_wrong_size_and_unknown_camera(tmp_path):
    with CaptureWriter(tmp_path / "cap", source="test") as w:
        w.set_cameras("s1", "seq", cams())
        with pytest.raises(CaptureError, match="camera says 64×48"):
            w.add_image("s1", "seq", 0, "cam0", np.zeros((10, 10, 3), np.uint8))
        with pytest.raises(CaptureError, match="no camera 'nope'"):
            w.add_image("s1", "seq", 0, "nope", np.zeros((48, 64, 3), np.uint8))
        w.add_image("s1", "seq", 0, "cam0", np.zeros((48, 64, 3), np.uint8))


def test_reader_names_the_bad_file(tmp_path):
    root = tmp_path / "cap"
    write_small(root)
    # missing image
    img = root / "s1/seq/00000/cam1.png"
    img.unlink()
    with pytest.raises(CaptureError, match="cam1.png: image file is missing"):
        load_capture(root)
    write_small(root)
    # camera missing from cameras.json
    cj = root / "s1/seq/cameras.json"
    data = json.loads(cj.read_text())
    del data["cameras"]["cam2"]
    cj.write_text(json.dumps(data))
    with pytest.raises(CaptureError, match="camera 'cam2' is not in .*cameras.json"):
        load_capture(root)
    # truncated JSON
    cj.write_text('{"cameras": {')
    with pytest.raises(CaptureError, match="cameras.json: not valid JSON"):
        load_capture(root)
    write_small(root)
    # non-rigid matrix
    data = json.loads(cj.read_text())
    data["cameras"]["cam0"]["world_to_cam"][0][0] = 3.0
    cj.write_text(json.dumps(data))
    with pytest.raises(CaptureError, match="cam0.*not a rotation"):
        load_capture(root)
    write_small(root)
    # changed file content is caught by the hash check
    (root / "s1/seq/00001/cam0.png").write_bytes((root / "s1/seq/00000/cam0.png").read_bytes())
    with pytest.raises(CaptureError, match="hash differs"):
        load_capture(root, check_hashes=True)
    # manifest size mismatch
    m = pd.read_parquet(root / "manifest.parquet")
    m.loc[0, "width"] = 99
    m.to_parquet(root / "manifest.parquet")
    with pytest.raises(CaptureError, match="manifest size 99×48"):
        load_capture(root)
