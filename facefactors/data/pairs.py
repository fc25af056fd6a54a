"""Verification pairs in the LFW layout: folds of matched and mismatched pairs, and ``pairs.txt``.

LFW's View 2 holds 10 folds of 300 matched pairs (two images of one person) and 300
mismatched pairs (images of two people); the folds are person-disjoint, so a threshold chosen
on nine folds is scored on people it never saw. ``make_pairs`` builds the same layout from
the identity labels of any split (seeded; fewer pairs per fold when a fold cannot supply
300 distinct ones, always the same number of matched and mismatched pairs in every fold).
``write_lfw_pairs`` / ``read_lfw_pairs`` use LFW's ``pairs.txt`` format: a header line
``<folds>\\t<pairs per fold>``, then per fold the matched lines ``name\\tn1\\tn2`` followed by
the mismatched lines ``name1\\tn1\\tname2\\tn2``, with 1-based image numbers per person.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from facefactors.errors import FacefactorsError
from facefactors.io import write_text


@dataclass
class Pairs:
    """Pairs of positions ``a[i]``, ``b[i]`` (into the identity array they were built from)."""

    a: np.ndarray        # int64 (P,)
    b: np.ndarray        # int64 (P,)
    same: np.ndarray     # bool (P,): matched pair
    fold: np.ndarray     # int64 (P,): fold of the pair

    def __len__(self) -> int:
        return int(self.a.shape[0])

    @property
    def n_folds(self) -> int:
        return int(self.fold.max()) + 1 if len(self) else 0

    @property
    def per_fold(self) -> int:
        """Matched (= mismatched) pairs per fold."""
        return int(np.sum(self.same & (self.fold == 0))) if len(self) else 0


def _matched(members: list[np.ndarray], n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Up to ``n`` distinct same-identity pairs, identities drawn round-robin in a random order."""
    pools = []
    for m in members:
        if len(m) >= 2:
            i, j = np.triu_indices(len(m), 1)
            order = rng.permutation(len(i))
            pools.append([(int(m[i[k]]), int(m[j[k]])) for k in order[:n]])
    out: list[tuple[int, int]] = []
    depth = 0
    while len(out) < n and any(depth < len(p) for p in pools):
        for p in rng.permutation(len(pools)):
            if depth < len(pools[p]) and len(out) < n:
                out.append(pools[p][depth])
        depth += 1
    return out


def _mismatched(members: list[np.ndarray], n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Up to ``n`` distinct pairs of images of two different identities of the fold."""
    k = len(members)
    if k < 2:
        return []
    capacity = sum(len(members[i]) * len(members[j]) for i in range(k) for j in range(i + 1, k))
    target = min(n, capacity)
    seen: set[tuple[int, int]] = set()
    out: list[tuple[int, int]] = []
    tries = 0
    while len(out) < target and tries < 50 * target + 100:
        tries += 1
        i, j = rng.choice(k, size=2, replace=False)
        pa, pb = int(rng.choice(members[i])), int(rng.choice(members[j]))
        key = (min(pa, pb), max(pa, pb))
        if key not in seen:
            seen.add(key)
            out.append((pa, pb))
    return out


def make_pairs(identity: Sequence[int] | np.ndarray, n_folds: int = 10, per_fold: int = 300,
               seed: int = 0) -> Pairs:
    """LFW-layout pairs from the identity label of each image (positions index ``identity``).

    Identities are shuffled (seeded) and dealt to ``n_folds`` person-disjoint folds. When there
    are fewer than ``2 * n_folds`` identities the number of folds drops to ``identities // 2``
    (at least 2). Each fold gets ``min(per_fold, what every fold can supply)`` matched and as
    many mismatched pairs, so folds stay the same size and balanced.
    """
    ids = np.asarray(identity).reshape(-1)
    if ids.size == 0:
        raise FacefactorsError("cannot build verification pairs: no images")
    if n_folds < 2 or per_fold < 1:
        raise FacefactorsError(f"verification pairs need n_folds >= 2 and per_fold >= 1, got {n_folds}, {per_fold}")
    rng = np.random.default_rng([int(seed), 11])
    people = rng.permutation(np.unique(ids))
    if len(people) < 4:
        raise FacefactorsError(f"cannot build verification pairs from {len(people)} identities; need at least 4")
    n_folds = min(n_folds, len(people) // 2)
    by_person = {int(p): np.flatnonzero(ids == p) for p in people}
    folds = [[by_person[int(p)] for p in people[f::n_folds]] for f in range(n_folds)]
    matched = [_matched(m, per_fold, rng) for m in folds]
    mismatched = [_mismatched(m, per_fold, rng) for m in folds]
    n = min(per_fold, *(len(x) for x in matched), *(len(x) for x in mismatched))
    if n < 1:
        raise FacefactorsError("cannot build verification pairs: some fold has no identity with two images")
    a, b, same, fold = [], [], [], []
    for f in range(n_folds):
        for pairs, is_same in ((matched[f][:n], True), (mismatched[f][:n], False)):
            for pa, pb in pairs:
                a.append(pa)
                b.append(pb)
                same.append(is_same)
                fold.append(f)
    return Pairs(np.asarray(a, np.int64), np.asarray(b, np.int64), np.asarray(same, bool), np.asarray(fold, np.int64))


# ----------------------------------------------------------------------------- pairs.txt

def image_numbers(identity: Sequence[int] | np.ndarray) -> np.ndarray:
    """1-based number of each image among its identity's images (in position order), as LFW numbers them."""
    ids = np.asarray(identity).reshape(-1)
    out = np.zeros(len(ids), np.int64)
    for p in np.unique(ids):
        where = np.flatnonzero(ids == p)
        out[where] = np.arange(1, len(where) + 1)
    return out


def write_lfw_pairs(path: str | os.PathLike, pairs: Pairs, identity: Sequence[int] | np.ndarray,
                    names: Sequence[str]) -> None:
    """Write ``pairs`` as an LFW ``pairs.txt`` (``names[identity]`` is a person's name), atomically."""
    ids = np.asarray(identity).reshape(-1)
    num = image_numbers(ids)
    per = pairs.per_fold
    lines = [f"{pairs.n_folds}\t{per}"]
    for f in range(pairs.n_folds):
        for is_same in (True, False):
            sel = np.flatnonzero((pairs.fold == f) & (pairs.same == is_same))
            if len(sel) != per:
                raise FacefactorsError(f"fold {f} has {len(sel)} {'matched' if is_same else 'mismatched'} pairs, "
                                       f"expected {per}; LFW folds must be balanced")
            for i in sel:
                pa, pb = int(pairs.a[i]), int(pairs.b[i])
                if is_same:
                    lines.append(f"{names[ids[pa]]}\t{num[pa]}\t{num[pb]}")
                else:
                    lines.append(f"{names[ids[pa]]}\t{num[pa]}\t{names[ids[pb]]}\t{num[pb]}")
    write_text(path, "\n".join(lines) + "\n")


def read_lfw_pairs(path: str | os.PathLike, identity: Sequence[int] | np.ndarray,
                   names: Sequence[str]) -> Pairs:
    """Read an LFW ``pairs.txt`` back into positions of ``identity`` (numbered as ``image_numbers``)."""
    path = Path(path)
    if not path.is_file():
        raise FacefactorsError(f"pairs file not found: {path}")
    ids = np.asarray(identity).reshape(-1)
    num = image_numbers(ids)
    name_to_id = {str(n): i for i, n in enumerate(names)}
    position = {(int(ids[k]), int(num[k])): k for k in range(len(ids))}
    lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]

    def bad(where: int, why: str):
        raise FacefactorsError(f"{path}: line {where}: {why}")

    if not lines or len(lines[0]) != 2:
        bad(1, "the header must be '<folds> <pairs per fold>'")
    try:
        n_folds, per = int(lines[0][0]), int(lines[0][1])
    except ValueError:
        bad(1, "the header must hold two integers")
    if len(lines) != 1 + 2 * n_folds * per:
        raise FacefactorsError(f"{path}: expected {2 * n_folds * per} pair lines for {n_folds} folds of {per} + {per}, "
                               f"found {len(lines) - 1}")

    def lookup(where: int, name: str, number: str) -> int:
        if name not in name_to_id:
            bad(where, f"unknown person {name!r}")
        try:
            key = (name_to_id[name], int(number))
        except ValueError:
            bad(where, f"image number {number!r} is not an integer")
        if key not in position:
            bad(where, f"{name!r} has no image number {number}")
        return position[key]

    a, b, same, fold = [], [], [], []
    row = 1
    for f in range(n_folds):
        for is_same in (True, False):
            for _ in range(per):
                parts = lines[row]
                where = row + 1
                if is_same and len(parts) == 3:
                    pa, pb = lookup(where, parts[0], parts[1]), lookup(where, parts[0], parts[2])
                elif not is_same and len(parts) == 4:
                    pa, pb = lookup(where, parts[0], parts[1]), lookup(where, parts[2], parts[3])
                else:
                    bad(where, f"expected a {'matched (3 fields)' if is_same else 'mismatched (4 fields)'} pair")
                a.append(pa)
                b.append(pb)
                same.append(is_same)
                fold.append(f)
                row += 1
    return Pairs(np.asarray(a, np.int64), np.asarray(b, np.int64), np.asarray(same, bool), np.asarray(fold, np.int64))
