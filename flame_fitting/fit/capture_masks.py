"""A capture's foreground masks for the fit (`mask_path` column of its manifest), decoded only when used.

`load_masks` checks each mask's header against its camera and leaves out (recording why) the ones it cannot use;
`FrameMasks` decodes one frame's masks on demand, so a sequence's masks are never all in memory at once. A view
without a usable mask simply has no silhouette term. Used by `capture.py` (the silhouette term, the features'
region).
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from flame_fitting.core.fileio import OutputError
from flame_fitting.core.readers import cv2_path, image_size
from flame_fitting.formats.capture import Capture

UNDECODABLE = "missing or not a decodable image; view fitted without its silhouette"


class FrameMasks(Mapping):
    """{camera: (H, W) uint8 mask} of one frame, each decoded from its file when it is asked for, so a sequence's
    masks are never all in memory at once (113 MB a frame at NeRSemble's 16 × 2200×3208; a 200-frame sequence held
    them all before). `get` of a file that does not decode gives None (that view has no silhouette term), recorded
    once in `skipped`."""

    def __init__(self, paths: dict[str, Path], skipped: list[dict] | None):
        self._paths, self._skipped, self._bad = paths, skipped, set()

    def __getitem__(self, camera: str) -> np.ndarray:
        import cv2

        path = self._paths[camera]  # KeyError: no mask for this view
        try:  # the header's size was checked against the camera's (load_masks)
            img = None if camera in self._bad else cv2.imread(cv2_path(path), cv2.IMREAD_GRAYSCALE)
        except OutputError:  # a name OpenCV would crash on (not UTF-8)
            img = None
        if img is None:
            if camera not in self._bad and self._skipped is not None:
                self._skipped.append({"path": str(path), "error": UNDECODABLE})
            self._bad.add(camera)
            raise KeyError(camera)
        return img

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


def load_masks(cap: Capture, subject: str, sequence: str, skipped: list[dict] | None = None
               ) -> dict[int, FrameMasks] | None:
    """{frame: {camera: (H, W) uint8 mask}} of the capture's `mask_path` column (rows without one are absent), each
    mask decoded when it is used (`FrameMasks`), None when the capture has no masks for this sequence. A mask whose
    header is unreadable, or whose size is not its camera's, is left out (that view simply has no silhouette term)
    and recorded in `skipped` as {"path", "error"}; so is one that does not decode when it is used."""
    m = cap.manifest
    if "mask_path" not in m.columns:
        return None
    rows = m[(m.subject == subject) & (m.sequence == sequence)]
    cams = cap.cameras(subject, sequence)
    paths: dict[int, dict[str, Path]] = {}
    for r in rows.itertuples():
        if not isinstance(r.mask_path, str) or not r.mask_path:
            continue
        path = cap.root / r.mask_path
        size = image_size(path) if path.is_file() else None  # the header only: no pixels decoded here
        if size is None:
            if skipped is not None:
                skipped.append({"path": str(path), "error": UNDECODABLE})
            continue
        cam = cams.get(r.camera)
        if cam is not None and size != (cam.width, cam.height):
            if skipped is not None:
                skipped.append({"path": str(path), "error": f"mask is {size[0]}×{size[1]} but camera "
                                f"{r.camera!r} is {cam.width}×{cam.height}; view fitted without its silhouette"})
            continue
        paths.setdefault(int(r.frame), {})[r.camera] = path
    return {f: FrameMasks(p, skipped) for f, p in paths.items()} or None
