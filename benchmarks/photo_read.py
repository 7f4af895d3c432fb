"""Benchmark of reading a very large phone photo for `geoface generate` (`geoface_model.photo.read_photo`).

A 16320×12240 JPEG (Samsung's 200 MP mode; matplotlib's grace_hopper.jpg upscaled with fine noise so it does not
compress to nothing, quality 90) is read in a fresh process each way, and the peak memory the read adds to the
process (max RSS after the read minus after the imports) and its seconds are reported:
  read_photo   what `geoface generate` does: above readers.MAX_IMAGE_PIXELS a JPEG is decoded at reduced scale by
               the JPEG decoder (PIL's draft, DCT scaling), then downscaled to max_side (4096)
  full_decode  the same photo decoded at full size by PIL, then downscaled to 4096 with INTER_AREA (what reading it
               without DCT scaling costs; before 2026-12-07 read_photo refused such a photo instead)

Run: `nice python benchmarks/photo_read.py` (~1 min; writes ~55 MB to a temporary folder). Last line: JSON.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

W, H, MAX_SIDE = 16320, 12240, 4096


def make_photo(path: Path) -> None:
    import cv2
    import matplotlib.cbook as cbook
    import numpy as np
    from PIL import Image

    src = np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB"))
    big = cv2.resize(src, (W, H), interpolation=cv2.INTER_CUBIC)
    rng = np.random.default_rng(0)
    for y in range(0, H, 510):  # strip by strip: fine texture without a second full-size array
        noise = rng.integers(-10, 11, (min(510, H - y), W, 1), dtype=np.int16)
        big[y:y + 510] = np.clip(big[y:y + 510] + noise, 0, 255).astype(np.uint8)
    Image.fromarray(big).save(path, quality=90)


def measure(path: str, way: str) -> dict:
    """In this (fresh) process: the read's added peak RSS (MB) and seconds, and the image size it gave."""
    import cv2
    import numpy as np
    from PIL import Image

    from geoface_model.photo import read_photo

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if way == "read_photo":
        img = read_photo(path, max_side=MAX_SIDE)[0]
    else:
        Image.MAX_IMAGE_PIXELS = None
        with Image.open(path) as im:
            full = np.asarray(im.convert("RGB"))
        s = MAX_SIDE / max(full.shape[:2])
        img = cv2.resize(full, (round(full.shape[1] * s), round(full.shape[0] * s)), interpolation=cv2.INTER_AREA)
    seconds = time.perf_counter() - t0
    added = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return {"added_peak_mb": round(added), "s": round(seconds, 2), "shape": list(img.shape)}


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--measure":
        print(json.dumps(measure(sys.argv[2], sys.argv[3])))
        return
    if len(sys.argv) == 3 and sys.argv[1] == "--make":
        make_photo(Path(sys.argv[2]))
        return
    with tempfile.TemporaryDirectory(prefix="geoface-photo-") as tmp:
        photo = Path(tmp) / "photo200.jpg"
        # in its own process: Linux carries a process's peak RSS over fork and exec, so the ~2 GB of making the
        # photo here would be every measuring child's starting peak
        subprocess.run([sys.executable, __file__, "--make", str(photo)], check=True)
        out = {"photo": f"{W}x{H} JPEG", "file_mb": round(photo.stat().st_size / 2**20, 1)}
        for way in ("read_photo", "full_decode"):
            r = subprocess.run([sys.executable, __file__, "--measure", str(photo), way], capture_output=True,
                               text=True, check=True)
            out[way] = json.loads(r.stdout.strip().splitlines()[-1])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
