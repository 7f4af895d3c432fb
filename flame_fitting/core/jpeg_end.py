"""Whether a JPEG file was cut short. OpenCV decodes a JPEG whose data stop early (an interrupted copy or
download) without an error: libjpeg prints "Premature end of JPEG file" and fills the missing rows with grey,
which an import would store as a real frame. `jpeg_cut_short` reads the marker structure instead of decoding:
from SOI, marker segments are skipped by their lengths (so an EXIF thumbnail's own SOI…EOI inside APP1 is never
mistaken for the image's), and after the first scan's header the image's end-of-image marker (FF D9) must follow
— inside entropy-coded data FF is always followed by 00 or a restart marker, so the first FF D9 is the EOI.
Data after the EOI (a phone's motion-photo video, vendor trailers) do not matter. Not a JPEG: not judged.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["jpeg_cut_short"]

SOI, EOI, SOS = 0xD8, 0xD9, 0xDA


def jpeg_cut_short(src: bytes | Path | str) -> bool:
    """True when `src` (a file or its bytes) is a JPEG stream that ends before its end-of-image marker (or whose
    marker segments run past the end of the data); False for a complete JPEG and for anything that is not a JPEG."""
    if isinstance(src, (str, Path)):
        with open(src, "rb") as f:
            if f.read(2) != b"\xff\xd8":
                return False
            f.seek(0)
            data = f.read()
    else:
        data = bytes(src)
    if data[:2] != b"\xff\xd8":
        return False
    i, n = 2, len(data)
    while i + 1 < n:
        if data[i] != 0xFF:
            return False  # no marker where one belongs: damaged, not cut short (the decoder says so)
        m = data[i + 1]
        if m == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if m == EOI:
            return False  # an image without a scan: the decoder refuses it
        if 0xD0 <= m <= 0xD7 or m in (0x01, SOI):  # markers without a length
            i += 2
            continue
        if i + 4 > n:
            return True
        end = i + 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if end > n:
            return True
        if m == SOS:
            return data.find(b"\xff\xd9", end) < 0
        i = end
    return True
