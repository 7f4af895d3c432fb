"""GeoFacePipeline on a small random transformer: shapes, seed determinism, save/load round trip, DDIM / Euler,
guidance (g = 0 is the reference-free branch), invariance to the world frame, posmap -> mesh."""
import numpy as np
import pytest
import torch

from flame_fitting.geometry.camera import Camera, intrinsics, look_at
from flame_fitting.uv import UVLayout, posmap_to_vertices
from geoface_model.model import GeoFaceTransformer
from geoface_model.pipeline import GeoFacePipeline, PipelineError

S, R = 32, 32


pytestmark = pytest.mark.usefixtures("one_thread")


def grid_layout(n: int = 6) -> UVLayout:
    """A flat n×n vertex grid whose UVs cover most of the square (two triangles per cell)."""
    u, v = np.meshgrid(np.linspace(0.05, 0.95, n), np.linspace(0.05, 0.95, n))
    uv = np.stack([u.ravel(), v.ravel()], 1)
    f = [[a, a + 1, a + n] for i in range(n - 1) for a in range(i * n, i * n + n - 1)]
    f += [[a + 1, a + n + 1, a + n] for i in range(n - 1) for a in range(i * n, i * n + n - 1)]
    return UVLayout.from_arrays(uv, np.array(f), np.array(f))


def random_transformer(geometry_stream: bool = True, seed: int = 0) -> GeoFaceTransformer:
    torch.manual_seed(seed)
    tr = GeoFaceTransformer(width=32, depth=2, heads=2, geometry_stream=geometry_stream)
    with torch.no_grad():  # leave adaLN-Zero's identity start: outputs must depend on the inputs
        for p in tr.parameters():
            p.normal_(0, 0.05)
    return tr.eval()


@pytest.fixture(scope="module")
def pipe():
    return GeoFacePipeline.build(random_transformer(), layout=grid_layout(), head_info={"kind": "grid", "gutter": 4},
                                 resolution=S, uv_resolution=R)


def cameras(yaws=(0.0, 35.0, -35.0), size=(64, 48)):
    K = intrinsics(70, 70, size[0] / 2, size[1] / 2)
    return [Camera(K=K, world_to_cam=look_at(0.8 * np.array([np.sin(a), 0.1, np.cos(a)]), np.zeros(3)),
                   width=size[0], height=size[1], name=f"c{i}") for i, a in enumerate(np.radians(yaws))]


def photo(seed=0, size=(64, 48)):
    return (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)


def run(p, seed=3, steps=3, ref=None, cams=None, **kw):
    cams = cams or cameras()
    p.set_progress_bar_config(disable=True)
    return p(photo() if ref is None else ref, cams[0], cams[1:], num_inference_steps=steps, seed=seed, **kw)


def test_shapes_and_mesh(pipe):
    out = run(pipe)
    assert out.images.shape == (2, S, S, 3) and out.images.dtype == np.uint8
    assert out.reference.shape == (1, S, S, 3)
    assert out.posmap.shape == (R, R, 3) and out.posmap.dtype == np.float32 and np.abs(out.posmap).max() <= 1
    assert out.vertices.shape == (36, 3) and np.isfinite(out.vertices).all()
    np.testing.assert_array_equal(out.faces, pipe.uv_layout.faces)
    np.testing.assert_array_equal(out.vertices, posmap_to_vertices(out.posmap, pipe.uv_layout))
    c_in, c_out = cameras()[1], out.cameras[0]  # 64×48 target camera rescaled to the model's S×S
    assert (c_out.width, c_out.height) == (S, S)
    np.testing.assert_allclose(c_out.K[0], c_in.K[0] * [S / 64, 1, S / 64], rtol=1e-6)
    np.testing.assert_allclose(c_out.K[1], c_in.K[1] * [1, S / 48, S / 48], rtol=1e-6)
    assert out.images.std() > 0


def test_seed_determinism(pipe):
    a, b, c = run(pipe, seed=7), run(pipe, seed=7), run(pipe, seed=8)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.posmap, b.posmap)
    assert not np.array_equal(a.posmap, c.posmap)
    gen = torch.Generator("cpu").manual_seed(7)  # an explicit generator gives the seed's noise
    np.testing.assert_array_equal(pipe(photo(), cameras()[0], cameras()[1:], num_inference_steps=3,
                                       generator=gen).posmap, a.posmap)


def test_save_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    assert not list(tmp_path.glob(".pipe.tmp*"))
    loaded = GeoFacePipeline.from_pretrained(tmp_path / "pipe")
    assert loaded.config.resolution == S and loaded.config.uv_resolution == R
    assert loaded.uv_layout.key == pipe.uv_layout.key and loaded.head_info == pipe.head_info
    assert type(loaded.scheduler) is type(pipe.scheduler)
    a, b = run(pipe), run(loaded)  # separate modules: equal up to float rounding, not bit for bit
    np.testing.assert_allclose(np.asarray(a.images, np.float32), np.asarray(b.images, np.float32), atol=1e-4)
    np.testing.assert_allclose(a.posmap, b.posmap, atol=1e-5)
    np.testing.assert_allclose(a.vertices, b.vertices, atol=1e-5)
    with pytest.raises(PipelineError, match="model_index.json"):
        GeoFacePipeline.from_pretrained(tmp_path / "pipe" / "transformer")


@pytest.mark.parametrize("kind", ["ddim", "euler"])
def test_scheduler_choice(pipe, kind):
    p = GeoFacePipeline.build(pipe.transformer, layout=pipe.uv_layout, resolution=S, uv_resolution=R, scheduler=kind)
    assert type(p.scheduler).__name__ == {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler"}[kind]
    assert p.scheduler.config.prediction_type == "epsilon" and p.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    a, b = run(p, steps=4), run(p, steps=4)
    assert np.isfinite(a.posmap).all()
    np.testing.assert_array_equal(a.images, b.images)
    assert len(p.scheduler.timesteps) == 4


def test_use_scheduler_switches(pipe):
    p = GeoFacePipeline.build(pipe.transformer, layout=pipe.uv_layout, resolution=S, uv_resolution=R)
    ddim = run(p).posmap
    p.use_scheduler("euler")
    assert type(p.scheduler).__name__ == "EulerDiscreteScheduler"
    assert not np.array_equal(run(p).posmap, ddim)
    p.use_scheduler("ddim")
    np.testing.assert_array_equal(run(p).posmap, ddim)
    with pytest.raises(PipelineError, match="choose one of"):
        p.use_scheduler("heun")


def test_guidance(pipe):
    ref_a, ref_b = photo(1), photo(2)
    # g = 1: conditional branch only -> the reference matters
    assert not np.array_equal(run(pipe, ref=ref_a).posmap, run(pipe, ref=ref_b).posmap)
    np.testing.assert_array_equal(run(pipe, ref=ref_a).posmap, run(pipe, ref=ref_a, guidance_scale=1.0).posmap)
    # g = 0: the unconditional branch (reference dropped) -> independent of the reference image
    np.testing.assert_array_equal(run(pipe, ref=ref_a, guidance_scale=0.0).posmap,
                                  run(pipe, ref=ref_b, guidance_scale=0.0).posmap)
    g3 = run(pipe, ref=ref_a, guidance_scale=3.0).posmap
    assert np.isfinite(g3).all() and not np.array_equal(g3, run(pipe, ref=ref_a).posmap)


def test_world_frame_invariance(pipe):
    """Only relative cameras reach the model (Plücker rays in the reference frame, scale-normalised)."""
    cams = cameras()
    rot = look_at(np.array([0.3, -0.2, 1.0]), np.zeros(3))  # an arbitrary rigid transform
    rot[:3, 3] = [0.1, -0.4, 0.25]
    moved = [c.with_pose((c.world_to_cam.astype(np.float64) @ np.linalg.inv(rot)).astype(np.float32)) for c in cams]
    a, b = run(pipe, cams=cams), run(pipe, cams=moved)
    np.testing.assert_allclose(a.posmap, b.posmap, atol=2e-4)
    assert np.abs(a.images.astype(int) - b.images).max() <= 1


class OracleTransformer(GeoFaceTransformer):
    """Predicts the exact ε of the noisy inputs towards known clean targets (x0 of the target views + geometry),
    reading the noise level from the pipeline's scheduler: a perfect model, to test the denoising loop itself."""

    def attach(self, scheduler, app0: torch.Tensor, geo0: torch.Tensor):
        self.sched, self.app0, self.geo0 = scheduler, app0, geo0  # (1, Ft, 3, S, S), (1, 3, R, R) in [-1, 1]

    def forward(self, app, timesteps, plucker, app_cond, geo=None, geo_cond=None, align=False, directions=()):
        from geoface_model.model import GeoFaceOutput
        s, n_ref = self.sched, int(app_cond[0].sum())
        t = timesteps[0, -1]  # the geometry frame's timestep, shared by the targets; references at 0
        assert (timesteps[0, :n_ref] == 0).all() and (timesteps[0, n_ref:] == t).all()
        if hasattr(s, "sigmas"):  # Euler: VE sigma of the current step, model input already scaled to VP
            assert float(t) == pytest.approx(float(s.timesteps[s.step_index]))
            ab = 1 / (1 + s.sigmas[s.step_index] ** 2)
        else:
            ab = s.alphas_cumprod[int(t)]
        kind = self.config.prediction_type

        def pred(x, x0):
            e = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
            if kind in ("edm", "sample_skip"):
                from geoface_model.noise_schedule import preconditioning
                c_skip, c_out = preconditioning(kind, torch.as_tensor(ab), self.config.sigma_data)
                return ((x0.double() - c_skip * x.double()) / c_out).float()
            return {"epsilon": e, "sample": x0 + 0 * x, "v_prediction": ab.sqrt() * e - (1 - ab).sqrt() * x0}[kind]
        out_app = torch.zeros_like(app)
        out_app[:, n_ref:] = pred(app[:, n_ref:], self.app0)
        return GeoFaceOutput(app=out_app, geo=pred(geo, self.geo0))


@pytest.mark.parametrize("kind,prediction", [("ddim", "epsilon"), ("euler", "epsilon"), ("ddim", "sample"),
                                             ("ddim", "v_prediction"), ("euler", "v_prediction"),
                                             ("ddim", "edm"), ("euler", "edm"), ("ddim", "sample_skip"),
                                             ("euler", "sample_skip")])
def test_perfect_model_recovers_the_data(kind, prediction):
    """With the exact ε (or x0, or v) at every step, deterministic DDIM and Euler both end at the clean targets:
    checks the timesteps, the flattening of targets + geometry, the reference handling, the decoding of the loop
    and that the model's prediction type reaches the scheduler."""
    torch.manual_seed(0)
    oracle = OracleTransformer(width=32, depth=1, heads=2, prediction_type=prediction).eval()
    p = GeoFacePipeline.build(oracle, layout=grid_layout(), resolution=S, uv_resolution=R, scheduler=kind)
    rng = np.random.default_rng(5)
    views = rng.integers(0, 256, (2, S, S, 3)).astype(np.uint8)
    posmap = rng.uniform(-0.9, 0.9, (R, R, 3)).astype(np.float32)
    oracle.attach(p.scheduler, torch.from_numpy(views).permute(0, 3, 1, 2)[None].float() / 127.5 - 1,
                  torch.from_numpy(posmap).permute(2, 0, 1)[None])
    for g in (1.0, 2.5):  # with the oracle both branches agree, so guidance changes nothing
        out = run(p, steps=10, guidance_scale=g)
        assert np.abs(out.images.astype(int) - views).max() <= 1
        np.testing.assert_allclose(out.posmap, posmap, atol=5e-3)


def test_appearance_only_model():
    p = GeoFacePipeline.build(random_transformer(geometry_stream=False), resolution=S, uv_resolution=R)
    out = run(p)
    assert out.images.shape == (2, S, S, 3) and out.posmap is None and out.vertices is None


def test_bad_input(pipe):
    cams = cameras()
    with pytest.raises(PipelineError, match="is 32×32 but its camera"):
        pipe(photo()[:32, :32], cams[0], cams[1:])
    with pytest.raises(PipelineError, match="non-empty list"):
        pipe(photo(), cams[0], [])
    with pytest.raises(PipelineError, match="uint8"):
        pipe(photo().astype(np.float32), cams[0], cams[1:])
    with pytest.raises(PipelineError, match="not divisible"):
        GeoFacePipeline.build(pipe.transformer, resolution=36)
