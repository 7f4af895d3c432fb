"""The face in a photo for `geoface generate` (generate.py): MediaPipe face detection (full-range model; a photo where
it finds none is searched again on `DETECT_TILE` px tiles: it misses faces under ~5 % of the photo's side), the
largest face chosen (several are noted: their sizes, where the one used is), FaceMesh's 478 landmarks of that face
(the candidate whose landmarks cover its detection box), and the notes on the head crop (`crop_notes`). No face, a
face only found with the photo turned, one under `MIN_FACE_PX` px or one FaceMesh cannot mesh (a profile) is one
`GenerateError` line."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .photo import GenerateError

MIN_FACE_PX = 64
DETECT_TILE = 1024  # side of the tiles searched when the whole photo shows no face (`_face_boxes`)
MIN_MESH_IOU = 0.3  # FaceMesh's landmarks' box must overlap the chosen detection box this much (IoU)
_DETECTOR: dict = {}


@dataclass
class PhotoFace:
    image: np.ndarray        # (H, W, 3) uint8 RGB (after any downscaling)
    landmarks: np.ndarray    # (478, 2) float32 pixels of `image`
    box: np.ndarray          # (4,) x0, y0, x1, y1 of the landmarks
    n_faces: int
    notes: list[str] = field(default_factory=list)


def _detect_boxes(rgb: np.ndarray) -> list[np.ndarray]:
    """MediaPipe full-range face detection on the whole of `rgb` -> boxes (x0, y0, x1, y1) in pixels."""
    if "det" not in _DETECTOR:
        import mediapipe as mp
        _DETECTOR["det"] = mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5)
    H, W = rgb.shape[:2]
    boxes = []
    for d in _DETECTOR["det"].process(np.ascontiguousarray(rgb)).detections or []:
        b = d.location_data.relative_bounding_box
        boxes.append(np.array([b.xmin * W, b.ymin * H, (b.xmin + b.width) * W, (b.ymin + b.height) * H]))
    return boxes


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1)."""
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, iw) * max(0.0, ih)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _face_boxes(rgb: np.ndarray) -> tuple[list[np.ndarray], bool]:
    """MediaPipe full-range face detection -> (boxes (x0, y0, x1, y1) in pixels, largest first; whether tiles were
    searched). The detector sees the photo at 192² and misses a face under ~5 % of its longest side (a 200 px face in
    a 4000 px photo); when it finds none in a photo larger than `DETECT_TILE`, overlapping tiles of that side (half a
    tile apart) are searched, and a face seen in several tiles counted once."""
    boxes, tiled = _detect_boxes(rgb), False
    H, W = rgb.shape[:2]
    if not boxes and max(H, W) > DETECT_TILE:
        tiled, step = True, DETECT_TILE // 2
        for y in range(0, max(1, H - step), step):
            for x in range(0, max(1, W - step), step):
                boxes += [b + [x, y, x, y] for b in _detect_boxes(rgb[y:y + DETECT_TILE, x:x + DETECT_TILE])]
    boxes = sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))
    kept: list[np.ndarray] = []
    for b in boxes:  # the same face seen in overlapping tiles: the largest box kept
        if all(_iou(b, k) < 0.3 for k in kept):
            kept.append(b)
    return kept, tiled


_TURNS = {1: "90° counter-clockwise", 2: "180°", 3: "90° clockwise"}


def _turned_face(rgb: np.ndarray) -> str | None:
    """How the photo must be turned for the detector to find a face in it (np.rot90 k = 1, 2, 3), or None."""
    for k, turn in _TURNS.items():
        if _face_boxes(np.rot90(rgb, k))[0]:
            return turn
    return None


def _mesh_on(rgb: np.ndarray, b: np.ndarray, factor: float):
    """FaceMesh on the square `factor` × the detection box `b` (clipped to the photo) -> the candidate whose
    landmarks' box overlaps `b` most: (478, 2) pixels of `rgb` and that overlap (IoU), or (None, 0)."""
    from flame_fitting.landmarks.detector import detect_rgb

    H, W = rgb.shape[:2]
    cx, cy, side = 0.5 * (b[0] + b[2]), 0.5 * (b[1] + b[3]), factor * max(b[2] - b[0], b[3] - b[1])
    x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    x1, y1 = int(min(W, cx + side / 2)), int(min(H, cy + side / 2))
    res = detect_rgb(np.ascontiguousarray(rgb[y0:y1, x0:x1]))
    if not res.detected:
        return None, 0.0
    faces = res.faces + np.array([x0, y0], np.float32)  # (K, 478, 2)
    ious = [_iou(np.r_[f.min(0), f.max(0)], b) for f in faces]
    k = int(np.argmax(ious))
    return faces[k], ious[k]


def detect_face(rgb: np.ndarray, where: str = "photo") -> PhotoFace:
    """The largest detected face's 478 landmarks: FaceMesh on a square 2.5× the detection box around it, the
    candidate whose landmarks cover that box (a smaller face inside the square can be FaceMesh's first); none
    does: again on a square 1.5× the box."""
    boxes, tiled = _face_boxes(rgb)
    if not boxes:
        turn = _turned_face(rgb)
        if turn is not None:
            raise GenerateError(f"{where}: no upright face found, but one is with the photo turned {turn} (a "
                                "sideways or upside-down photo without an EXIF orientation): turn it upright and retry")
        raise GenerateError(f"{where}: no face found (MediaPipe face detection)")
    b = boxes[0]
    notes = []
    if tiled:
        notes.append(f"face found by searching {DETECT_TILE} px tiles (none on the whole photo: small in it)")
    if len(boxes) > 1:
        sizes = ", ".join(f"{max(q[2] - q[0], q[3] - q[1]):.0f}" for q in boxes)
        notes.append(f"{len(boxes)} faces found ({sizes} px across); using the largest, at x {b[0]:.0f}-{b[2]:.0f}, "
                     f"y {b[1]:.0f}-{b[3]:.0f}")
    if max(b[2] - b[0], b[3] - b[1]) < MIN_FACE_PX:
        raise GenerateError(f"{where}: the face is only {max(b[2] - b[0], b[3] - b[1]):.0f} px across "
                            f"(need >= {MIN_FACE_PX} px); use a larger or closer photo")
    pts, iou = _mesh_on(rgb, b, 2.5)
    if pts is None or iou < MIN_MESH_IOU:
        pts, iou = _mesh_on(rgb, b, 1.5)
    if pts is None:
        raise GenerateError(f"{where}: a face was detected but MediaPipe FaceMesh found no landmarks on it (a face "
                            "in profile or half hidden?); use a photo of the face from the front, turned at most "
                            "~60° to the side")
    if iou < MIN_MESH_IOU:
        raise GenerateError(f"{where}: MediaPipe FaceMesh's landmarks do not fall on the detected face at x "
                            f"{b[0]:.0f}-{b[2]:.0f}, y {b[1]:.0f}-{b[3]:.0f} (overlap {iou:.2f}); crop the photo to it")
    pts = pts.astype(np.float32)
    box = np.array([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()], np.float32)
    if box[3] - box[1] < MIN_FACE_PX:
        raise GenerateError(f"{where}: the face is only {box[3] - box[1]:.0f} px tall (need >= {MIN_FACE_PX} px)")
    return PhotoFace(rgb, pts, box, len(boxes), notes)


def crop_notes(box: tuple[int, int, int], width: int, height: int, size: int) -> list[str]:
    """Notes on the head crop `box` (x0, y0, side) of a width×height photo resized to size²: the part of it outside
    the photo (filled by replicating the photo's edge pixels: streaks the model sees) and an upsampling."""
    x0, y0, side = box
    out = {"left": -x0, "top": -y0, "right": x0 + side - width, "bottom": y0 + side - height}
    notes = []
    inside = max(0, min(width, x0 + side) - max(0, x0)) * max(0, min(height, y0 + side) - max(0, y0))
    if inside < side * side:
        where = ", ".join(f"{k} {v} px" for k, v in out.items() if v > 0)
        notes.append(f"the head crop ({side} px square) extends outside the photo ({where}; "
                     f"{1 - inside / side ** 2:.0%} of it), filled by repeating the photo's edge pixels")
    if side < size:
        notes.append(f"the head crop is {side} px, upsampled x{size / side:.1f} to the model's {size} px: "
                     "a low-resolution reference (a larger or closer photo of the face gives a sharper one)")
    return notes
