"""The one check every loader makes of a numeric array it was given (numeric, the expected shape, finite), and the
one way a loader reads an .npz it was given (`load_npz`: without pickle, one error naming the file)."""
from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np


def checked_array(value, shape: tuple[int | None, ...], what: str, error: type[Exception] = ValueError
                  ) -> np.ndarray:
    """`value` as a float64 array of `shape` (None = any size on that axis) with no NaN or inf; otherwise
    `error` naming `what` and the problem."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise error(f"{what}: not a numeric array") from None
    if arr.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, arr.shape)):
        raise error(f"{what}: expected shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise error(f"{what}: contains NaN or inf")
    return arr


MAX_NPZ_ARRAY_BYTES = 8 << 30  # one array of an .npz the toolkit reads (the largest real ones are ~100 MB)
# all the arrays read from one .npz together: at most NPZ_FREE_BYTES, or more only for a file of at least 1/MAX_INFLATION
# of their size (deflate turns 1 KB of zeros into ~1 MB: 3.6 MB of .npz declaring 2 GiB were allocated and read)
NPZ_FREE_BYTES, MAX_INFLATION = 1 << 30, 256


def _declared_too_big(f, keys, max_bytes: int) -> str | None:
    """What is wrong when an array of the .npz archive in `f` declares more than `max_bytes` (its .npy header, read
    before any data: a 200-byte file can declare terabytes), else None. Archives numpy cannot open are left to
    np.load, which says what is wrong with them."""
    try:
        zf = zipfile.ZipFile(f)
        size, total = f.seek(0, 2), 0
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    with zf:
        for name in zf.namelist():
            key = name[:-4] if name.endswith(".npy") else name
            if keys is not None and key not in keys:
                continue
            try:
                with zf.open(name) as m:
                    version = np.lib.format.read_magic(m)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(m)
            except Exception:  # noqa: BLE001 - not an .npy member or a bad header: np.load says what is wrong
                continue
            n = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if n > max_bytes:
                return (f"array {key!r} declares {shape} of {dtype} ({n / 2**30:.1f} GiB), more than a file the "
                        f"toolkit reads holds ({max_bytes / 2**30:.0f} GiB); a damaged or hostile file")
            total += n
    if total > max(NPZ_FREE_BYTES, MAX_INFLATION * size):
        return (f"its arrays declare {total / 2**30:.1f} GiB, {total / max(size, 1):.0f} times the file's {size} bytes "
                f"(at most {NPZ_FREE_BYTES / 2**30:.0f} GiB, or {MAX_INFLATION} times the file: compressed zeros "
                "declaring gigabytes); a damaged or hostile file")
    return None


def load_npz(path: Path | str, error: type[Exception] = ValueError, keys: tuple[str, ...] | None = None,
             max_bytes: int = MAX_NPZ_ARRAY_BYTES) -> dict[str, np.ndarray]:
    """The arrays of the .npz `path` (only `keys`, when given), read without pickle (allow_pickle=False). A missing,
    empty, truncated or corrupt file, one that is not an .npz, one holding object arrays, or one without one of `keys`
    raises `error` naming the file and the problem, and so does one whose arrays declare more than `max_bytes` each
    or more than NPZ_FREE_BYTES / MAX_INFLATION times the file's size together (checked in the headers, before
    anything is allocated)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            too_big = _declared_too_big(f, keys, max_bytes)
            if too_big is None:
                f.seek(0)
                with np.load(f, allow_pickle=False) as z:
                    files = list(z.files)
                    arrays = {k: z[k] for k in files if keys is None or k in keys}
    except MemoryError:
        raise error(f"{path}: its arrays do not fit in this machine's memory") from None
    except FileNotFoundError:
        raise error(f"{path}: missing") from None
    except OSError as e:  # a folder, no permission, ...
        raise error(f"{path}: cannot read ({e.strerror or e})") from None
    except ValueError as e:
        if "Object arrays" in str(e):
            raise error(f"{path}: holds object arrays, which are never loaded (no pickle); write plain numeric "
                        "arrays (np.savez)") from None
        why = "neither a zip archive nor numpy data" if "pickled data" in str(e) else str(e)
        raise error(f"{path}: not a readable .npz ({why})") from None
    except TypeError:  # np.load returned one array (an .npy under an .npz name), not an archive
        raise error(f"{path}: not a readable .npz (an .npy array file, not an .npz archive)") from None
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise error(f"{path}: not a readable .npz: truncated or corrupt ({type(e).__name__}: {e})") from None
    if too_big is not None:
        raise error(f"{path}: {too_big}")
    missing = [k for k in keys or () if k not in arrays]
    if missing:
        raise error(f"{path}: missing arrays {missing} (it has {sorted(files)})")
    return arrays


MAX_PLAIN_ROWS = 1_000_000  # a table may hold more rows only where its file has at least MIN_BYTES_PER_ROW per row
MIN_BYTES_PER_ROW = 1.0     # every real table row carries a unique path or key (several bytes after compression)
TABLE_FREE_BYTES = 1 << 28   # a table's decoded columns: at most this, or MAX_INFLATION times its file (a 2 KB
                             # file of one 500-byte text in 10^6 rows decoded to 680 MB)


def _decoded_bytes(src, rows: int, limit: int) -> int:
    """Bytes the columns of the parquet table `src` take decoded, found without decoding its text: its pages'
    uncompressed size (the metadata; above `limit`, that is the answer), fixed-width columns from the schema (rows ×
    width), text columns read as dictionaries (an index a row) and the text of each row summed. ValueError for a
    column of another kind (lists, structs: no table geoface reads holds one)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    def is_text(t):
        return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)

    pf, total, texts = pq.ParquetFile(src), 0, []
    md = pf.metadata
    pages = sum(md.row_group(g).column(c).total_uncompressed_size for g in range(md.num_row_groups)
                for c in range(md.num_columns))
    if pages > limit:
        return pages
    for f in pf.schema_arrow:
        t = f.type.value_type if pa.types.is_dictionary(f.type) else f.type
        if is_text(t):
            texts.append(f.name)
        elif pa.types.is_null(t) or pa.types.is_boolean(t):
            total += rows
        elif pa.types.is_nested(t) or t.bit_width % 8:
            raise ValueError(f"column {f.name!r} is of type {t}; a table geoface reads holds numbers and text")
        else:
            total += rows * t.bit_width // 8
    if texts:
        if hasattr(src, "seek"):
            src.seek(0)
        for col in pq.ParquetFile(src, read_dictionary=texts).read(columns=texts).columns:
            for chunk in col.chunks:
                total += pc.sum(pc.take(pc.binary_length(chunk.dictionary), chunk.indices)).as_py() or 0
    return total


def read_parquet_table(src, where: str, error: type[Exception] = ValueError):
    """pandas DataFrame of a parquet file (`src`: a path or a binary buffer); `error` naming `where` when it is not
    a readable table, or when it declares more than MAX_PLAIN_ROWS rows at under MIN_BYTES_PER_ROW bytes of file
    per row: a few hundred KB can declare 50 million rows of repeated values, which took 2.7 GB and aborted the
    process (`geoface diff-captures`) before any check of the content; or whose columns take more than
    TABLE_FREE_BYTES / MAX_INFLATION times the file decoded (`_decoded_bytes`, before pandas decodes them)."""
    import pandas as pd
    import pyarrow.parquet as pq

    try:
        size = src.getbuffer().nbytes if hasattr(src, "getbuffer") else Path(src).stat().st_size
        rows = pq.ParquetFile(src).metadata.num_rows
        if hasattr(src, "seek"):
            src.seek(0)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for damaged files
        raise error(f"{where}: not a readable parquet table ({type(e).__name__}: {e})") from None
    if rows > MAX_PLAIN_ROWS and size < MIN_BYTES_PER_ROW * rows:
        raise error(f"{where}: declares {rows} rows in {size} bytes; a damaged or hostile file")
    try:
        limit = max(TABLE_FREE_BYTES, MAX_INFLATION * size)
        decoded = _decoded_bytes(src, rows, limit)
        if hasattr(src, "seek"):
            src.seek(0)
    except Exception as e:  # noqa: BLE001
        raise error(f"{where}: not a readable parquet table ({type(e).__name__}: {e})") from None
    if decoded > limit:
        raise error(f"{where}: its {rows} rows take {decoded / 2**20:.0f} MiB decoded, {decoded / max(size, 1):.0f} "
                    f"times the file's {size} bytes (at most {TABLE_FREE_BYTES >> 20} MiB, or {MAX_INFLATION} times the "
                    "file: one long text repeated in every row); a damaged or hostile file")
    try:
        return pd.read_parquet(src)
    except Exception as e:  # noqa: BLE001
        raise error(f"{where}: not a readable parquet table ({type(e).__name__}: {e})") from None
