"""A capture's splits (manifest column `split`), checked when it is opened (`capture.load_capture`): every value is
one of SPLITS (`check_split_values`), and the images of one sequence share one split (`check_sequence_splits`); and
when it is written (`capture.CaptureWriter.add_image`: `check_image_split`).

A held-out identity split (whole subjects: the importers' hash rule, the synthetic generator) and a held-out sequence
split (NeRSemble's benchmark holds out sequences of people seen in training) are both kept. A sequence whose frames,
or one frame whose views, are in different splits is refused: the dataset stage writes a sequence's shards with one
split and a sample is one frame's views, so all but one of the splits would be dropped without a word
(docs/capture_format.md). Both checks work on whole columns (1.6 million rows at NeRSemble's scale); the rows are
read one by one only to name the first offending one.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .capture_checks import CaptureError

SPLITS = ("train", "val", "test")
ONE_SPLIT = ("a sequence's images must share one split (its shards hold one split, a sample one frame's views): split "
             "by subject or by sequence")


def check_split_values(df: pd.DataFrame, where: str) -> None:
    """CaptureError naming `where` and every split value of the manifest `df` that is not one of SPLITS."""
    bad = set() if df.split.isin(SPLITS).all() else set(df.split) - set(SPLITS)
    if bad:
        raise CaptureError(f"{where}: unknown split values {sorted(bad, key=repr)}")  # mixed types sort too


def check_image_split(seen: dict, subject: str, sequence: str, split: str, file: Path) -> None:
    """The writer's rule (`CaptureWriter.add_image`, before it writes `file`): CaptureError unless `split` is one of
    SPLITS and the split of the images of the sequence added before (`seen`: {(subject, sequence): split}, filled
    in here), so that no writer makes a capture `check_sequence_splits` refuses."""
    if split not in SPLITS:
        raise CaptureError(f"{subject}: split must be one of {SPLITS}, got {split!r}")
    if (other := seen.setdefault((subject, sequence), split)) != split:
        raise CaptureError(f"{file}: split {split!r} differs from the split {other!r} of the images of "
                           f"{subject}/{sequence} added before; {ONE_SPLIT}")


def check_sequence_splits(df: pd.DataFrame, where: str) -> np.ndarray:
    """CaptureError naming `where`, the sequence and its two splits when a sequence of the manifest `df` holds images
    of more than one split: the first row in manifest order whose split differs from its sequence's first row's, and
    that first row. Each distinct (sequence, split) pair of integer codes is counted once (0.04 s at 1.6 million
    rows). Returns every row's sequence number in sorted (subject, sequence) order (`groupby(...).ngroup()`), which
    `check_manifest_cameras` takes instead of grouping the manifest again."""
    seq = df.groupby(["subject", "sequence"]).ngroup().to_numpy(np.int64)
    split = pd.factorize(df["split"])[0].astype(np.int64)
    if len(pd.unique(seq * len(SPLITS) + split)) == len(pd.unique(seq)):
        return seq
    first = pd.Series(split).groupby(seq).transform("first").to_numpy()
    bad = df.iloc[int(np.argmax(split != first))]
    ref = df.iloc[int(np.argmax(seq == seq[int(np.argmax(split != first))]))]
    raise CaptureError(
        f"{where}: sequence {ref.subject}/{ref.sequence} mixes splits: frame {ref.frame} camera {ref.camera} is "
        f"{ref.split!r} but frame {bad.frame} camera {bad.camera} is {bad.split!r}; {ONE_SPLIT}")
