"""MediaPipe FaceMesh landmarks (478 points, refine_landmarks=True, static images) on many images.

`detect_files` decodes and detects in `workers` threads of this process (the calling thread is
one), each with its own FaceMesh graph: MediaPipe releases the GIL while a graph runs and
cv2.imread while it decodes, so threads use every core without the seconds a process pool
spends starting and importing MediaPipe in each worker. While the calling thread imports
MediaPipe and builds its graph, the other threads decode images ahead (at most
`LOOKAHEAD_BYTES` of pixels each). Graphs are kept for later calls. Results come in input order.
One bad image never stops the run: it gets `detected=False` and a `reason`:
  "unreadable"  the file is missing or not a decodable image
  "wrong_size"  its size differs from what the manifest/camera says
  "no_face"     MediaPipe found no face
  "detector_error: ..."  MediaPipe raised on it (none known; recorded rather than fatal)

Up to `MAX_FACES` faces are meshed per image (FaceMesh's `max_num_faces`): `faces` holds every candidate
(most confident detection first) and `points` / `score` / `box` describe one of them, the first by default.
An image with more than one face is flagged by `n_faces` > 1; which face belongs to the capture's subject is
decided across the calibrated views (`landmark_set.choose_faces`), not here.

Coordinates are pixels in geoface's convention (pixel centres at +0.5): MediaPipe's normalised x, y times width,
height, plus 0.5. MediaPipe's x·W is a coordinate whose pixel centres are the integers (measured: the same view
detected at twice the size by pixel duplication or area averaging gives d_2S − 2·d_S = +0.42…+0.55 px without the
+0.5, 0 with it; against rendered ground truth a constant −0.56 px in x and y at 256², 512² and 1024²), so before
2026-12-06 every landmark sat half a pixel up and left (a 0.5 mm floor on a fit from exact landmarks at 512²).
`box` is the landmarks' bounding box (x0, y0, x1, y1).
`score` in [0, 1] is the confidence of MediaPipe's short-range face detector (BlazeFace,
face_detection_short_range.tflite) for the face the mesh was fitted to: FaceMesh runs that
detector on the whole image first and fits the mesh inside its box, so the score is read from
the same graph run (its `face_detections` stream) instead of a second detector pass. It equals
what `mediapipe.solutions.face_detection.FaceDetection(model_selection=0)` reports on the image
(same model, same input), is >= 0.5 whenever a face is detected (FaceMesh's detection
threshold) and 0 when none is. With several faces, each face's score is that of the detection whose box centre
is nearest to the centre of the face's landmarks.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from flame_fitting.core.fileio import OutputError
from flame_fitting.core.readers import cv2_path

N_LANDMARKS = 478
LOOKAHEAD_BYTES = 64 << 20  # decoded pixels a thread may hold while MediaPipe loads (81 images at 512²)
MAX_FACES = 2  # faces meshed per image: a second face is seen (and flagged) instead of hiding the first

# FaceMesh(static_image_mode=True, max_num_faces=MAX_FACES, refine_landmarks=True, min_detection_confidence=0.5)
# as mediapipe.solutions.face_mesh builds it, plus the graph's face detections as a second output.
_GRAPH = "mediapipe/modules/face_landmark/face_landmark_front_cpu.binarypb"
_SIDE_INPUTS = {"num_faces": MAX_FACES, "with_attention": True, "use_prev_landmarks": False}
_CALCULATOR_PARAMS = {
    "facedetectionshortrangecpu__facedetectionshortrange__facedetection__TensorsToDetectionsCalculator"
    ".min_score_thresh": 0.5,
    "facelandmarkcpu__ThresholdingCalculator.threshold": 0.5,
}


@dataclass
class LandmarkResult:
    detected: bool
    reason: str  # "" when detected
    points: np.ndarray  # (478, 2) float32 pixels, NaN when not detected
    score: float
    box: np.ndarray  # (4,) float32 x0, y0, x1, y1 (NaN when not detected)
    faces: np.ndarray = field(default_factory=lambda: np.zeros((0, N_LANDMARKS, 2), np.float32))  # (K,478,2) all
    face_scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # (K,) detection score each

    @property
    def n_faces(self) -> int:
        return len(self.faces)

    def with_face(self, k: int) -> "LandmarkResult":
        """The same result describing candidate face k (points, score, box)."""
        pts = self.faces[k]
        return LandmarkResult(True, "", pts, float(self.face_scores[k]), _box(pts), self.faces, self.face_scores)

    def dropped(self, reason: str) -> "LandmarkResult":
        """The same result marked not detected for `reason` (its candidate faces kept for the record)."""
        nan = np.full((N_LANDMARKS, 2), np.nan, np.float32)
        return LandmarkResult(False, reason, nan, 0.0, np.full(4, np.nan, np.float32), self.faces, self.face_scores)


def _new_mesh():
    from mediapipe.python.solution_base import SolutionBase

    return SolutionBase(binary_graph_path=_GRAPH, side_inputs=_SIDE_INPUTS, calculator_params=_CALCULATOR_PARAMS,
                        outputs=["multi_face_landmarks", "face_detections"])


class MeshPool:
    """FaceMesh graphs for threads: one graph serves one thread at a time (a graph's `process` is not
    re-entrant); graphs are built on demand (the first one imports MediaPipe) and kept for reuse."""

    def __init__(self) -> None:
        self._free: list = []
        self._lock = threading.Lock()

    def acquire(self):
        with self._lock:
            return self._free.pop() if self._free else _new_mesh()

    def release(self, mesh) -> None:
        with self._lock:
            self._free.append(mesh)


_POOL = MeshPool()


def _empty(reason: str) -> LandmarkResult:
    nan = np.full((N_LANDMARKS, 2), np.nan, np.float32)
    return LandmarkResult(False, reason, nan, 0.0, np.full(4, np.nan, np.float32))


def _box(pts: np.ndarray) -> np.ndarray:
    return np.array([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()], np.float32)


def _face_scores(faces: np.ndarray, detections, w: int, h: int) -> np.ndarray:
    """(K,) score of each face (K,478,2): the detection whose box centre is nearest the landmarks' box centre."""
    dets = list(detections or [])
    if not dets:
        return np.zeros(len(faces), np.float32)
    if len(faces) == 1:  # one mesh: the detection it was fitted in is the most confident one
        return np.array([max(d.score[0] for d in dets)], np.float32)
    centres = np.array([(b.xmin + b.width / 2, b.ymin + b.height / 2)
                        for b in (d.location_data.relative_bounding_box for d in dets)]) * (w, h)
    scores = np.array([d.score[0] for d in dets], np.float32)
    mid = (faces.min(1) + faces.max(1)) / 2                                    # (K, 2)
    return scores[np.argmin(np.linalg.norm(mid[:, None] - centres[None], axis=2), 1)]


def _detect(mesh, rgb: np.ndarray) -> LandmarkResult:
    """FaceMesh on (H,W,3) uint8 RGB with `mesh` (a graph from `MeshPool`); up to MAX_FACES candidates."""
    h, w = rgb.shape[:2]
    res = mesh.process({"image": rgb})
    if not res.multi_face_landmarks:
        return _empty("no_face")
    faces = np.stack([np.array([(p.x, p.y) for p in f.landmark]) * (w, h) + 0.5  # pixel centres at +0.5
                      for f in res.multi_face_landmarks]).astype(np.float32)
    scores = _face_scores(faces, res.face_detections, w, h)
    return LandmarkResult(True, "", faces[0], float(scores[0]), _box(faces[0]), faces, scores)


def detect_rgb(rgb: np.ndarray) -> LandmarkResult:
    """Landmarks of the (most confident) face in an (H,W,3) uint8 RGB image, in the calling thread (`faces` has
    every face found, up to MAX_FACES)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"detect_rgb: need an (H,W,3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    mesh = _POOL.acquire()
    try:
        return _detect(mesh, rgb)
    finally:
        _POOL.release(mesh)


Job = tuple[str, int | None, int | None]  # path, expected width, expected height


def _decode(job: Job) -> np.ndarray | LandmarkResult:
    """(H,W,3) uint8 RGB image of a job, or the failed result if it is unreadable or has the wrong size."""
    path, width, height = job
    try:
        img = cv2.imread(cv2_path(path), cv2.IMREAD_COLOR_RGB)
    except OutputError:  # a name OpenCV would crash on (not UTF-8)
        img = None
    if img is None:
        return _empty("unreadable")
    if width is not None and (img.shape[1], img.shape[0]) != (width, height):
        return _empty("wrong_size")
    return img


class _Run:
    """One `detect_files` call: a shared job counter, results in input order, and the progress bar."""

    def __init__(self, jobs: list[Job], pool: MeshPool, bar) -> None:
        self.jobs, self.pool, self.bar = jobs, pool, bar
        self.results: list[LandmarkResult | None] = [None] * len(jobs)
        self.ready = threading.Event()  # set once the calling thread has a graph (MediaPipe imported)
        self._next = 0
        self._lock = threading.Lock()

    def take(self) -> int | None:
        with self._lock:
            i, self._next = self._next, self._next + 1
        return i if i < len(self.jobs) else None

    def stop(self) -> None:
        """Hand out no more jobs (the calling thread failed or was interrupted)."""
        with self._lock:
            self._next = len(self.jobs)
        self.ready.set()

    def finish(self, mesh, i: int, img: np.ndarray | LandmarkResult) -> None:
        """Store job i's result: FaceMesh on img with `mesh`, or img itself when decoding already failed."""
        if isinstance(img, np.ndarray):
            try:
                img = _detect(mesh, img)
            except Exception as e:  # MediaPipe failing on one image must not stop the run
                img = _empty(f"detector_error: {type(e).__name__}: {e}")
        self.results[i] = img
        with self._lock:
            self.bar.update(1)

    def work(self, loader: bool) -> None:
        """Process jobs until none is left; non-loader threads decode ahead until the loader has its graph."""
        backlog, held = [], 0
        if loader:
            mesh = self.pool.acquire()
            self.ready.set()
        else:
            while not self.ready.is_set() and held < LOOKAHEAD_BYTES and (i := self.take()) is not None:
                backlog.append((i, img := _decode(self.jobs[i])))
                held += img.nbytes if isinstance(img, np.ndarray) else 0
            mesh = self.pool.acquire()
        try:
            for i, img in backlog:
                self.finish(mesh, i, img)
            while (i := self.take()) is not None:
                self.finish(mesh, i, _decode(self.jobs[i]))
        finally:
            self.pool.release(mesh)


def detect_files(paths: list[str | Path], sizes: list[tuple[int, int]] | None = None, workers: int | None = None,
                 progress: bool = True, desc: str = "landmarks", pool: MeshPool | None = None) -> list[LandmarkResult]:
    """Detect landmarks on image files with `workers` threads (default: one per core), results in input order.
    `sizes` (width, height) per file are checked if given. `pool` defaults to the module's graphs."""
    from tqdm import tqdm

    if sizes is not None and len(sizes) != len(paths):
        raise ValueError(f"detect_files: {len(sizes)} sizes for {len(paths)} paths")
    jobs = [(str(p), *(sizes[i] if sizes is not None else (None, None))) for i, p in enumerate(paths)]
    workers = max(1, min(len(jobs), workers or os.cpu_count() or 1))
    with tqdm(total=len(jobs), desc=desc, disable=not progress) as bar:
        run = _Run(jobs, pool or _POOL, bar)
        with ThreadPoolExecutor(max(1, workers - 1)) as ex:  # the calling thread is a worker too
            helpers = [ex.submit(run.work, False) for _ in range(workers - 1)]
            try:
                run.work(True)
            except BaseException:
                run.stop()  # helpers finish their current image, then stop
                raise
            for h in helpers:
                h.result()  # re-raise a helper's unexpected error
    return run.results


def results_to_arrays(results: list[LandmarkResult]) -> dict[str, np.ndarray]:
    """Stack results: points (N,478,2), detected (N,), score (N,), box (N,4), reason (N,) str, n_faces (N,)."""
    return {
        "n_faces": np.array([r.n_faces for r in results], np.int16),
        "points": np.stack([r.points for r in results]).astype(np.float32),
        "detected": np.array([r.detected for r in results], bool),
        "score": np.array([r.score for r in results], np.float32),
        "box": np.stack([r.box for r in results]).astype(np.float32),
        "reason": np.array([r.reason for r in results]),
    }


YAW_BANDS = ((0, 45), (45, 70), (70, 90))


def yaw_band_key(lo: int, hi: int) -> str:
    return f"yaw_{lo}_{hi}"


def yaw_bands(yaw_deg: np.ndarray) -> dict[str, np.ndarray]:
    """{`yaw_<lo>_<hi>`: (N,) bool} of yaw_deg (N,) per |yaw| band: [0,45], (45,70], (70,90]."""
    ay = np.abs(np.asarray(yaw_deg, np.float64))
    return {yaw_band_key(lo, hi): ((ay >= lo) if lo == 0 else (ay > lo)) & (ay <= hi) for lo, hi in YAW_BANDS}


def band_means(values: np.ndarray, yaw_deg: np.ndarray) -> dict[str, float | None]:
    """Mean of the finite values (N,) per |yaw| band of yaw_deg (N,) (None when the band has none)."""
    values = np.asarray(values, np.float64)
    sels = {k: sel & np.isfinite(values) for k, sel in yaw_bands(yaw_deg).items()}
    return {k: float(values[sel].mean()) if sel.any() else None for k, sel in sels.items()}


def rates_by_yaw(detected: np.ndarray, yaw_deg: np.ndarray) -> dict[str, float | None]:
    """Detection rate per |yaw| band (None for an empty band)."""
    return band_means(np.asarray(detected, np.float64), yaw_deg)
