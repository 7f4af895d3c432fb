"""Shards: write/read round trip, validation, Dataset view choice and target remapping, synthetic sphere."""
import os
import signal

import numpy as np
import pytest
import torch

from flame_fitting.core.interrupt import interrupts_held
from geoface_model.config import TokensConfig
from geoface_model.data import (GeoFaceDataset, ShardError, check_compatible, collate, read_shard,
                                read_shard_meta, write_shard)
from geoface_model.synthetic import make_synthetic_shard, render_sample


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    make_synthetic_shard(d / "train-0.safetensors", n_samples=3, n_views=5, resolution=32, uv_resolution=32, seed=1)
    make_synthetic_shard(d / "sub" / "train-1.safetensors", n_samples=2, n_views=5, resolution=32, uv_resolution=32, seed=2)
    make_synthetic_shard(d / "val-0.safetensors", n_samples=2, n_views=5, resolution=32, uv_resolution=32, seed=3, split="val")
    return d


def _sample(rng, V=3):
    s = render_sample(rng, V, 32, 32, 8, 8)
    s["images"] = np.round((s["images"] + 1) * 127.5) / 127.5 - 1  # on the 8-bit grid, as real views are
    return s | {"subject": "s0", "sequence": "q", "frame": 7}


def test_round_trip_and_metadata(tmp_path):
    rng = np.random.default_rng(0)
    samples = [_sample(rng), _sample(rng)]
    meta = write_shard(tmp_path / "a.safetensors", samples, split="test", patch_size=8, geo_patch_size=4)
    assert not list(tmp_path.glob(".*"))  # no temp file left
    m, t = read_shard(tmp_path / "a.safetensors")
    assert m == meta == read_shard_meta(tmp_path / "a.safetensors")
    assert (m.resolution, m.uv_resolution, m.app_tokens, m.geo_tokens, m.split) == (32, 32, 4, 8, "test")
    assert m.subjects == ["s0"] and m.samples[1]["frame"] == 7
    np.testing.assert_allclose(t["images"][1].float().numpy() / 127.5 - 1, samples[1]["images"], atol=1e-6)
    np.testing.assert_array_equal(t["uv_posmap"][0].numpy(), samples[0]["uv_posmap"])
    o = t["a2g_offsets"]
    np.testing.assert_array_equal(t["a2g_index"][o[1] : o[2]].numpy(), samples[1]["a2g_index"])


@pytest.mark.parametrize("break_it, message", [
    (lambda s: s.__setitem__("a2g_weight", s["a2g_weight"] * 0.5), "do not sum to 1"),
    (lambda s: s["g2a_index"].__setitem__((0, 2), 999), "out of range"),
    (lambda s: s.__setitem__("images", s["images"] * 2), "outside"),
    (lambda s: s.pop("uv_mask"), "missing"),
    (lambda s: s.__setitem__("K", s["K"][:2]), "shape"),
])
def test_bad_samples_are_refused(tmp_path, break_it, message):
    s = _sample(np.random.default_rng(1))
    break_it(s)
    with pytest.raises(ShardError, match=message):
        write_shard(tmp_path / "b.safetensors", [s], split="train", patch_size=8, geo_patch_size=8)
    assert not (tmp_path / "b.safetensors").exists()


def test_dataset_views_and_remapped_targets(shard_dir):
    ds = GeoFaceDataset(shard_dir, "train", n_ref=1, n_tgt=2, seed=0)
    assert len(ds) == 5 and len(GeoFaceDataset(shard_dir, "val", 1, 2)) == 2
    raws = [read_shard(p)[1] for p in ds.paths]
    for n_item in range(len(ds)):
        s, i = ds.items[n_item]
        raw, it = raws[s], ds[n_item]
        views = it["views"].numpy()
        assert len(set(views)) == 3 and it["images"].shape == (3, 3, 32, 32)
        np.testing.assert_allclose(it["images"].numpy(), raw["images"][i, views].float().numpy() / 127.5 - 1)
        np.testing.assert_array_equal(it["world_to_cam"].numpy(), raw["world_to_cam"][i, views].numpy())
        for n in ("a2g", "g2a"):
            o = raw[f"{n}_offsets"]
            rows = raw[f"{n}_index"][o[i] : o[i + 1]].numpy()
            wts = raw[f"{n}_weight"][o[i] : o[i + 1]].numpy()
            want = {(int(np.where(views == r[0])[0][0]), r[1], r[2]): w for r, w in zip(rows, wts) if r[0] in views}
            got = {tuple(r): w for r, w in zip(it[f"{n}_index"].tolist(), it[f"{n}_weight"].numpy())}
            assert got.keys() == want.keys() and all(abs(got[k] - want[k]) < 1e-7 for k in got)


def test_view_choice_random_per_epoch_for_train_fixed_for_val(shard_dir):
    tr = GeoFaceDataset(shard_dir, "train", 1, 2, seed=0)
    va = GeoFaceDataset(shard_dir, "val", 1, 2, seed=0)
    e0 = [tr.choose_views(i).tolist() for i in range(len(tr))]
    assert e0 == [tr.choose_views(i).tolist() for i in range(len(tr))]
    tr.set_epoch(1)
    assert e0 != [tr.choose_views(i).tolist() for i in range(len(tr))]
    v0 = [va.choose_views(i).tolist() for i in range(len(va))]
    va.set_epoch(5)
    assert v0 == [va.choose_views(i).tolist() for i in range(len(va))]


def test_collate_adds_batch_column(shard_dir):
    ds = GeoFaceDataset(shard_dir, "train", 1, 2)
    items = [ds[0], ds[3]]
    b = collate(items)
    assert b["images"].shape == (2, 3, 3, 32, 32) and b["n_ref"] == 1
    n0 = len(items[0]["a2g_index"])
    assert b["a2g_index"].shape == (n0 + len(items[1]["a2g_index"]), 4)
    assert (b["a2g_index"][:n0, 0] == 0).all() and (b["a2g_index"][n0:, 0] == 1).all()
    torch.testing.assert_close(b["a2g_index"][n0:, 1:], items[1]["a2g_index"])


def test_refusals(shard_dir, tmp_path):
    meta = read_shard_meta(shard_dir / "train-0.safetensors")
    check_compatible(meta, TokensConfig(resolution=32, patch_size=8, uv_resolution=32, geo_patch_size=8), "x")
    with pytest.raises(ShardError, match="resolution = 32 .* tokens.resolution = 64"):
        check_compatible(meta, TokensConfig(), "x")
    with pytest.raises(ShardError, match="geo_patch_size"):
        check_compatible(meta, TokensConfig(resolution=32, uv_resolution=32, geo_patch_size=4), "x")
    with pytest.raises(ShardError, match="no shard of split 'test'"):
        GeoFaceDataset(shard_dir, "test")
    with pytest.raises(ShardError, match=r"5 views, fewer than the 6 asked \(train.n_ref = 2 \+ train.n_tgt = 4\)"):
        GeoFaceDataset(shard_dir, "train", n_ref=2, n_tgt=4)
    (tmp_path / "junk.safetensors").write_bytes(b"not a shard")
    with pytest.raises(ShardError, match="junk.safetensors"):
        read_shard_meta(tmp_path / "junk.safetensors")


def test_synthetic_targets_are_geometrically_correct():
    """The best geo token of each a2g query holds a visible surface point that projects into the query's
    app token; likewise for g2a. Checks the UV/texel and row-major token conventions end to end."""
    S, R, p, gp = 32, 32, 8, 8
    s = render_sample(np.random.default_rng(4), 3, S, R, p, gp)
    pos = s["uv_posmap"].reshape(3, R // gp, gp, R // gp, gp).transpose(1, 3, 2, 4, 0).reshape((R // gp) ** 2, gp * gp, 3)

    def hits(v, app, geo):
        K, w2c = s["K"][v].astype(np.float64), s["world_to_cam"][v].astype(np.float64)
        pts = pos[geo].astype(np.float64)
        centre = -w2c[:3, :3].T @ w2c[:3, 3]
        visible = ((centre - pts) * pts).sum(1) > 0
        pc = pts @ w2c[:3, :3].T + w2c[:3, 3]
        uv = pc[:, :2] / pc[:, 2:] @ K[:2, :2].T + K[:2, 2]
        r, c = divmod(app, S // p)
        inside = (uv[:, 0] >= c * p - 2) & (uv[:, 0] <= (c + 1) * p + 2) & (uv[:, 1] >= r * p - 2) & (uv[:, 1] <= (r + 1) * p + 2)
        return bool((visible & inside).any())

    for name in ("a2g", "g2a"):
        idx, w = s[f"{name}_index"], s[f"{name}_weight"]
        assert len(idx) > 20
        best = {}
        for (v, q, k), wt in zip(idx.tolist(), w):
            if wt > best.get((v, q), (None, -1))[1]:
                best[(v, q)] = (k, wt)
        for (v, q), (k, _) in best.items():
            app, geo = (q, k) if name == "a2g" else (k, q)
            assert hits(v, app, geo), (name, v, q, k)
    # the masks agree with the a2g queries: every supervised app token is mostly foreground
    m = s["masks"][:, 0].reshape(3, S // p, p, S // p, p).mean((2, 4)).reshape(3, -1)
    assert (m[s["a2g_index"][:, 0], s["a2g_index"][:, 1]] >= 0.4).all()


def _tampered(src, dst, change):
    """A copy of shard `src` at `dst` with `change(tensors, metadata)` applied (a damaged or hand-made shard)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as f:
        meta, t = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    change(t, meta)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(t, str(dst), metadata=meta)
    return dst.parent


def test_a_shard_with_targets_outside_its_grids_is_refused_by_name(shard_dir, tmp_path):
    """A view id of -1 in a2g_index was remapped by wrap-around to the last chosen view (every row of the sample then
    supervised that view); offsets that do not tile the index rows and a header that is not the format's JSON raised
    TypeError / JSONDecodeError or read other samples' rows. Each is now a ShardError naming the file."""
    src = shard_dir / "train-0.safetensors"

    def negative_view(t, meta):
        o = t["a2g_offsets"]
        t["a2g_index"][int(o[0]):int(o[1]), 0] = -1

    ds = GeoFaceDataset(_tampered(src, tmp_path / "neg" / "a.safetensors", negative_view), "train")
    with pytest.raises(ShardError, match=r"a\.safetensors#0: a2g_index out of range"):
        ds.item(0, np.arange(4))
    assert len(ds.item(1, np.arange(4))["a2g_index"]) > 0  # the other samples read as before

    def bad_offsets(t, meta):
        t["g2a_offsets"][1] = t["g2a_offsets"][2] + 1  # not non-decreasing

    with pytest.raises(ShardError, match="b.safetensors: g2a_offsets must be 4 non-decreasing offsets"):
        GeoFaceDataset(_tampered(src, tmp_path / "off" / "b.safetensors", bad_offsets), "train")

    def bad_header(t, meta):
        meta["geoface"] = "{not json"

    with pytest.raises(ShardError, match="c.safetensors: the 'geoface' metadata: not valid JSON"):
        read_shard_meta(_tampered(src, tmp_path / "hdr" / "c.safetensors", bad_header) / "c.safetensors")

    def deep_header(t, meta):  # beyond the JSON parser's depth: a RecursionError traceback before
        meta["geoface"] = "[" * 100_000 + "]" * 100_000

    with pytest.raises(ShardError, match=r"e.safetensors: the 'geoface' metadata: not valid JSON \(nested too deep"):
        read_shard_meta(_tampered(src, tmp_path / "deep" / "e.safetensors", deep_header) / "e.safetensors")

    def bad_field(t, meta):
        meta["geoface"] = meta["geoface"].replace('"n_views": 5', '"n_views": "5"')

    with pytest.raises(ShardError, match="d.safetensors: the 'geoface' metadata's \\['n_views'\\]"):
        read_shard_meta(_tampered(src, tmp_path / "fld" / "d.safetensors", bad_field) / "d.safetensors")


LAYOUT_CASES = {  # a shard from elsewhere whose tensors disagree with its own header
    "fewer views": (lambda t, m: t.__setitem__("images", t["images"][:, :2].contiguous()),
                    r"tensor images is U8 \[3, 2, 3, 32, 32\], its header \(n_samples 3, n_views 5, resolution 32, "
                    r"uv_resolution 32\) gives U8 \[3, 5, 3, 32, 32\]"),
    "fewer samples": (lambda t, m: t.__setitem__("K", t["K"][:1].contiguous()), r"tensor K is F32 \[1, 5, 3, 3\]"),
    "smaller images": (lambda t, m: t.__setitem__("images", t["images"][..., :8, :8].contiguous()),
                       r"tensor images is U8 \[3, 5, 3, 8, 8\]"),
    "float index": (lambda t, m: t.__setitem__("a2g_index", t["a2g_index"].float()), r"tensor a2g_index is F32 \[\d+, 3\]"),
    "short weights": (lambda t, m: t.__setitem__("g2a_weight", t["g2a_weight"][:3].contiguous()),
                      r"tensor g2a_weight is F32 \[3\], .* gives F32 \[\d+\]"),
    "missing tensor": (lambda t, m: t.pop("world_to_cam"), r"tensor world_to_cam is missing"),
}


@pytest.mark.parametrize("case", LAYOUT_CASES)
def test_a_shard_whose_tensors_disagree_with_its_header_is_refused_by_name(shard_dir, tmp_path, case):
    """Checked against the safetensors header when the dataset opens the shard: before, fewer views than the header
    said failed `geoface train` with an IndexError traceback at the first batch, a missing tensor with a
    SafetensorError, and 8×8 images, float indices or a 1-channel UV map were read without a word."""
    change, message = LAYOUT_CASES[case]
    d = _tampered(shard_dir / "train-0.safetensors", tmp_path / "ds" / "a.safetensors", change)
    with pytest.raises(ShardError, match=f"^{d / 'a.safetensors'}: {message}"):
        GeoFaceDataset(d, "train", n_ref=1, n_tgt=2)


def test_an_interrupt_inside_an_items_read_unwinds_as_keyboardinterrupt(shard_dir):
    """SIGTERM (`kill PID`, turned into KeyboardInterrupt by the commands, core/interrupt.py) landing inside
    safetensors' slice read, which calls back into Python, came out as safetensors' "ValueError: could not determine
    the shape of object type 'torch.storage.UntypedStorage'" for about 1 in 3 interrupts (a traceback and exit 1 from
    an interrupted `geoface train`); the read holds it to its end now. 300 interrupts at random points of reads."""
    ds = GeoFaceDataset(shard_dir, "train", n_ref=1, n_tgt=2, seed=0)

    def terminate(signum, frame):
        raise KeyboardInterrupt

    old_int = signal.getsignal(signal.SIGINT)  # pytest-xdist's workers ignore it: whatever it is, it is kept
    old_term = signal.signal(signal.SIGTERM, terminate)
    old_alarm = signal.signal(signal.SIGALRM, lambda signum, frame: os.kill(os.getpid(), signal.SIGTERM))
    unwound, other = 0, []
    try:
        for it in range(300):
            try:
                signal.setitimer(signal.ITIMER_REAL, 1e-4 * (1 + it % 20))
                while True:
                    ds[it % len(ds)]
            except KeyboardInterrupt:
                unwound += 1
            except Exception as e:  # noqa: BLE001 - what the interrupt must not become
                other.append(repr(e))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_alarm)
        signal.signal(signal.SIGTERM, old_term)
    assert not other and unwound == 300, (len(other), other[:2])
    assert not {signal.SIGINT, signal.SIGTERM} & signal.pthread_sigmask(signal.SIG_BLOCK, ())  # none left blocked
    assert signal.getsignal(signal.SIGINT) is old_int


def test_interrupts_held_delivers_at_the_end():
    """What the read above relies on: a SIGINT inside the block runs no handler there; the one that was set runs at
    the block's end (KeyboardInterrupt), after the block's work is done."""
    done = []
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own (pytest-xdist's workers: ignored)
    try:
        with pytest.raises(KeyboardInterrupt):
            with interrupts_held():
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(1000):  # bytecodes where an unheld handler would have run
                    pass
                done.append(True)
        assert done == [True] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)
