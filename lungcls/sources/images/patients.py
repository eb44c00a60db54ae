"""Patients and splits of an image set: consecutive case numbers form one pseudonymous
patient, and whole patient groups go to train, val or test (the package docstring says why)."""

from __future__ import annotations

import csv
import io
from collections import Counter, defaultdict
from dataclasses import dataclass

from lungcls.dataset.manifest import SplitCounts
from lungcls.dataset.splits import SPLITS
from lungcls.sources.images.folders import SourceImage
from lungcls.sources.images.options import ImageImportError, ImportOptions

GAP = "gap"  # a group imported without a label, between a held-out block and training


@dataclass
class PatientGroup:
    """Consecutive case numbers of one class, taken as one pseudonymous patient."""

    class_name: str
    label: int
    first: int  # lowest case number the group covers
    last: int
    images: list[SourceImage]
    split: str | None = None

    @property
    def patient_id(self) -> str:
        return f"{self.class_name}:{self.first}-{self.last}"

    @property
    def archive(self) -> str:
        return f"{self.class_name}-{self.first:05d}-{self.last:05d}.zip"


def group_patients(
    images: dict[str, list[SourceImage]], options: ImportOptions
) -> list[PatientGroup]:
    """Contiguous case-number ranges of `group_size` per class, with splits if asked for."""
    groups: list[PatientGroup] = []
    for class_name, members in images.items():
        label = int(class_name in options.positive)
        first = members[0].number
        by_index: dict[int, list[SourceImage]] = defaultdict(list)
        for image in members:
            by_index[(image.number - first) // options.group_size].append(image)
        ordered = [
            PatientGroup(
                class_name,
                label,
                first + index * options.group_size,
                first + (index + 1) * options.group_size - 1,
                by_index[index],
            )
            for index in sorted(by_index)
        ]
        assign_splits(ordered, options)
        groups += ordered
    return groups


def assign_splits(ordered: list[PatientGroup], options: ImportOptions) -> None:
    """Test: one contiguous range of groups; val: a few contiguous blocks spread evenly over
    the rest; train: the others, except `gap` groups next to a held-out block."""
    if options.test_range is None and not options.val_fraction:
        return
    n = len(ordered)
    start, end = options.test_range or (0.0, 0.0)
    first, last = round(start * n), round(end * n)
    if end > start and last == first:  # a small class still gets one test group
        last = min(n, first + 1)
        first = last - 1
    rest = [i for i in range(n) if not first <= i < last]
    n_val = max(1, round(options.val_fraction * n)) if options.val_fraction else 0
    if n_val and len(rest) - n_val < 1:
        raise ImageImportError(
            f"class {ordered[0].class_name!r} has {n} patient groups: too few for "
            f"{last - first} test and {n_val} val groups; lower --group-size or the shares"
        )
    splits = ["test" if first <= i < last else "train" for i in range(n)]
    # A few blocks across the range, not one tail: a threshold chosen on val must hold
    # across it; and blocks, not scattered groups: a patient longer than a group would
    # otherwise sit on both sides of most val groups.
    blocks = min(options.val_blocks, n_val)
    for block in range(blocks):
        size = n_val // blocks + (block < n_val % blocks)
        begin = round((block + 0.5) * len(rest) / blocks - size / 2)
        for position in range(max(0, min(begin, len(rest) - size)), len(rest))[:size]:
            splits[rest[position]] = "val"
    # Groups bordering a held-out block are left out (no label): the patient whose slices
    # cross the boundary then trains on neither side of it.
    held_out = [i for i in range(n) if splits[i] != "train"]
    for i in range(n):
        if splits[i] == "train" and any(0 < abs(i - j) <= options.gap_groups for j in held_out):
            splits[i] = GAP
    for group, split in zip(ordered, splits, strict=True):
        group.split = split


def labels_csv(groups: list[PatientGroup], batch: str) -> str:
    """One patient row per group (none for gap groups: they stay unlabelled); a `split`
    column only when splits were assigned."""
    with_split = any(g.split for g in groups)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["patient_id", "label", *(["split"] if with_split else [])])
    for group in groups:
        if group.split == GAP:
            continue
        row = [f"{batch}:{group.patient_id}", group.label]
        writer.writerow(row + ([group.split] if with_split else []))
    return buffer.getvalue()


def split_counts(groups: list[PatientGroup]) -> SplitCounts:
    """Images by assigned split and label (gap groups under `gap`); empty when no split was
    assigned."""
    if not any(g.split for g in groups):
        return {}
    counts: dict[str, Counter[str]] = {s: Counter() for s in (*SPLITS, GAP)}
    for group in groups:
        counts[group.split or "train"][str(group.label)] += len(group.images)
    return {s: {"0": c["0"], "1": c["1"]} for s, c in counts.items()}
