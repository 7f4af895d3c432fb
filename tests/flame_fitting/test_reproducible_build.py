"""The stand-in head model is the same bytes in every run (docs/lineage.md): its Gram–Schmidt sums do not depend on
the BLAS thread count, and a landmark on an edge shared by triangles gets the same triangle whatever the last bits
of its distances."""
import subprocess
import sys
import textwrap

import numpy as np

from flame_fitting.geometry.surface_points import closest_points

_GRAM_SCHMIDT = textwrap.dedent("""
    import sys
    import numpy as np
    from flame_fitting.head.standin.fields import gram_schmidt
    rng = np.random.default_rng(0)
    fields = [rng.standard_normal((5058, 3)) * np.where(rng.random((5058, 1)) < 0.4, 1.0, 0.0) for _ in range(12)]
    sys.stdout.write(np.stack(gram_schmidt(fields)).tobytes().hex())
""")


_RIGID_FIT = textwrap.dedent("""
    import sys
    import numpy as np
    from flame_fitting.geometry.rigid import rigid_fit, umeyama
    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.1, (5023, 3))
    c, s = np.cos(0.3), np.sin(0.3)
    b = a @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T + [0.01, 0.02, 0.3] + rng.normal(0, 1e-6, a.shape)
    R, t, resid = rigid_fit(a.astype(np.float32), b.astype(np.float32))
    scale, R2, t2 = umeyama(a, b)
    sys.stdout.write(np.concatenate([R.ravel(), t, [resid, scale], R2.ravel(), t2]).tobytes().hex())
""")


def _run(threads: str, code: str = _GRAM_SCHMIDT) -> str:
    env = {"OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout


def test_gram_schmidt_does_not_depend_on_the_blas_thread_count():
    # with BLAS dot products (x @ q) the 1- and 2-thread results differed in their last bits
    assert _run("1") == _run("2")


def test_rigid_fit_does_not_depend_on_the_blas_thread_count():
    """The correspondences stage records each frame's rigid residual: a unit run in a pool process must write the
    key file a unit run in the stage's own process writes. With BLAS products (w @ src, bᵀa, a @ Rᵀ) the residual
    differed in its last bits between 1 and 2 BLAS threads (found as a flaky byte-for-byte test)."""
    assert _run("1", _RIGID_FIT) == _run("2", _RIGID_FIT)


def test_a_point_on_a_shared_edge_gets_the_lowest_face_whatever_the_last_bits():
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [-1, 1, 0]], np.float64) * 0.01
    faces = np.array([[0, 1, 2], [1, 3, 2], [0, 2, 4]], np.int64)
    on_edge = np.array([0.005, 0.005, 0.002])          # above the edge (1, 2) that faces 0 and 1 share
    on_vertex = np.array([0.0, 0.01, -0.003])          # above vertex 2, shared by all three faces
    jitter = np.random.default_rng(0).normal(0, 1e-16, (50, 3))   # last-bit differences, either face nearer
    fi, _, d = closest_points(np.concatenate([on_edge + jitter, on_vertex + jitter]), verts, faces)
    assert (fi == 0).all()                             # before: faces 0 and 1 (2) by the jitter's sign
    np.testing.assert_allclose(d, np.repeat([0.002, 0.003], 50), atol=1e-12)
