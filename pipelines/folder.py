"""A folder of images + canonical `cameras.json` -> canonical capture.

`cameras.json` is exactly what `flame_fitting.formats.capture.save_cameras` writes:
{"convention": "opencv", "units": "m", "cameras": {name: {"K", "world_to_cam", "width", "height"[, "dist"]}}}.
Two layouts (`captures.root` = <root>):
    flat:    <root>/cameras.json, <root>/<camera>.png|jpg[, <root>/masks/<camera>.png]
             -> one subject (`captures.subject` or the folder name), sequence `captures.sequence`, frame 0
    nested:  <root>/<subject>/<sequence>/<frame>/<camera>.png|jpg[, <frame>/masks/<camera>.png]
             with cameras.json in <subject>/<sequence>/, else <subject>/, else <root>/ (nearest wins);
             <frame> is an integer folder name (so a canonical capture folder can be re-imported,
             e.g. to crop or downscale it).
The layout is flat when <root> holds image files itself. An RGBA image's alpha is its mask when
there is no masks/ file. Cameras with distortion are undistorted (same K, stored dist = None).
"""
from __future__ import annotations

import stat
from pathlib import Path

from flame_fitting.core.readers import read_mask
from flame_fitting.formats.capture import CaptureError
from pipelines.common import CaptureImport
from pipelines.import_config import ImportConfig, ImportReport, load_json, select_frames, select_names
from pipelines.views import read_image_file

EXTS = (".png", ".jpg", ".jpeg")


def not_regular(path: Path) -> str | None:
    """Why `path`, named as an image or mask, is not read (None for a regular file, through symbolic links): a named
    pipe would block the reader, a device never end. One stat; nothing is opened."""
    try:
        mode = path.stat().st_mode
    except OSError as e:  # a broken symbolic link, a link loop
        kind = "a broken symbolic link" if path.is_symlink() else f"unreadable ({e.strerror})"
    else:
        if stat.S_ISREG(mode):
            return None
        kind = {stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
                stat.S_IFBLK: "a block device", stat.S_IFDIR: "a folder"}.get(stat.S_IFMT(mode), "another kind of file")
    return f"not a regular file but {kind}; not read"


def entry_name(imp: CaptureImport, path: Path) -> str:
    """`path` relative to the source, itself rather than what a symbolic link resolves to (a broken one: nothing)."""
    return (Path(imp.rel(path.parent)) / path.name).as_posix()


def images_in(folder: Path) -> dict[str, Path]:
    """{camera: image path} of the entries named as images directly in `folder` (png preferred over jpg; a regular file
    over one that is not: a FIFO, socket, device or broken link named `cam0.png` is listed only when no regular image
    of that camera is, and the importer records it as skipped, `not_regular`)."""
    out = {}
    entries = [p for p in folder.iterdir() if p.suffix.lower() in EXTS and not p.is_dir()]
    for p in sorted(entries, key=lambda q: (q.stem, not_regular(q) is not None, EXTS.index(q.suffix.lower()))):
        out.setdefault(p.stem, p)
    return out


def read_cameras(imp: CaptureImport, path: Path) -> dict:
    """{name: Camera} from a canonical cameras.json; bad cameras are skipped and recorded."""
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("cameras"), dict) or not data["cameras"]:
        raise CaptureError(f"{path}: no 'cameras' mapping")
    if data.get("convention", "opencv") != "opencv":
        raise CaptureError(f"{path}: convention must be 'opencv', got {data.get('convention')!r}")
    if data.get("units", "m") != "m":
        raise CaptureError(f"{path}: units must be 'm' (translations in metres), got {data.get('units')!r}; "
                           "convert the world_to_cam translations to metres")
    cams = {}
    for name, d in data["cameras"].items():
        where = imp.rel(path)
        missing = [k for k in ("K", "world_to_cam", "width", "height") if not isinstance(d, dict) or k not in d]
        if missing:
            imp.skip(f"{where} [camera {name}]", f"missing keys {missing}")
            continue
        cam = imp.camera(name, d["K"], d["world_to_cam"], d["width"], d["height"], d.get("dist"), where)
        if cam is not None:
            cams[name] = cam
    return cams


def import_view_set(imp: CaptureImport, subject: str, sequence: str, cam_file: Path, frames: dict[int, Path]) -> None:
    """Import one sequence: `frames` {frame: folder holding <camera>.png and masks/}."""
    cams = read_cameras(imp, cam_file)
    files = {f: images_in(d) for f, d in frames.items()}
    used = select_names({c for fs in files.values() for c in fs}, imp.cfg.cameras)
    imp.set_cameras(subject, sequence, {n: c for n, c in cams.items() if n in used}, imp.rel(cam_file))
    for f, folder in sorted(frames.items()):
        for cam in used:
            if cam not in files[f]:
                continue
            path = files[f][cam]
            if why := not_regular(path):  # before anything opens it: a FIFO would block the import
                imp.skip(entry_name(imp, path), why)
                continue
            if cam not in cams:
                imp.skip(imp.rel(path), f"camera {cam!r} is not in {imp.rel(cam_file)}")
                continue
            if why := imp.unusable(subject, sequence, cam):  # refused camera: its images are not decoded
                imp.skip(imp.rel(path), why)
                continue
            try:
                rgb, mask = read_image_file(path)
            except CaptureError as e:
                imp.skip(imp.rel(path), str(e))
                continue
            mpath = folder / "masks" / f"{cam}.png"
            if imp.cfg.masks and (mpath.exists() or mpath.is_symlink()):
                odd = not_regular(mpath)  # a FIFO is not opened
                item, why = (entry_name(imp, mpath), odd) if odd else (imp.rel(mpath), imp.outside(mpath))
                try:
                    mask = None if why else read_mask(mpath, error=CaptureError)
                except CaptureError as e:
                    why = str(e)
                if why or mask is None:
                    imp.skip(item, why or "not a readable mask image")
            imp.add(subject, sequence, f, cam, rgb, path, mask=mask if imp.cfg.masks else None)


def nearest_cameras(root: Path, *dirs: Path) -> Path | None:
    """The first cameras.json of `dirs` then `root`, None when there is none; CaptureError naming one that is there
    but not a regular file (a FIFO, folder, broken link: never opened, never passed over for one further up)."""
    for d in (*dirs, root):
        path = d / "cameras.json"
        if path.exists() or path.is_symlink():
            if why := not_regular(path):
                raise CaptureError(f"{path}: {why}")
            return path
    return None


def import_capture(root_in: Path | str, out: Path | str, cfg: ImportConfig) -> ImportReport:
    root = Path(root_in)
    if not root.is_dir():
        raise CaptureError(f"{root}: not a folder")
    with CaptureImport("folder", root, out, cfg) as imp:
        if images_in(root):  # flat layout
            if (cam_file := nearest_cameras(root)) is None:
                raise CaptureError(f"{root / 'cameras.json'}: file is missing (flat folder layout)")
            imp.info["layout"] = "flat"
            import_view_set(imp, cfg.subject or root.resolve().name, cfg.sequence, cam_file, {0: root})
        else:
            imp.info["layout"] = "nested"
            subjects = select_names([d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")], cfg.subjects)
            for subject in subjects:
                sdir = root / subject
                for sequence in select_names([d.name for d in sdir.iterdir() if d.is_dir()], cfg.sequences):
                    qdir = sdir / sequence
                    frames = {int(d.name): d for d in qdir.iterdir() if d.is_dir() and d.name.isascii() and d.name.isdigit()}
                    if not frames:
                        continue
                    cam_file = nearest_cameras(root, qdir, sdir)
                    if cam_file is None:
                        imp.skip(imp.rel(qdir), "no cameras.json in the sequence, subject or root folder")
                        continue
                    chosen = select_frames(frames, cfg)
                    for f in chosen:
                        if f not in frames:
                            imp.skip(f"{imp.rel(qdir)} [frame {f}]", "selected frame is not in the folder")
                    import_view_set(imp, subject, sequence, cam_file, {f: frames[f] for f in chosen if f in frames})
    return imp.report
