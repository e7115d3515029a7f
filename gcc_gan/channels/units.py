"""Channel units: the indices of tensor dimensions that must be pruned together.

Every index of every tensor dimension carries a label: a unit id, or -1 for an index that is
not a channel (a spatial position, a batch row). Op rules *unify* labels that must go together
(a residual add ties x[c] to y[c]; a conv ties its weight's input slice to its input channel).
Unified units form one class of a union-find; a class is pruned as a whole or not at all.

A class is *frozen* when it cannot be pruned, and remembers why (`Cause`): it reaches a network
input or output, an op without a rule (a barrier), or a constraint of an op (a mean over
channels, a reshape that mixes channels with other dims). Unifying a unit with a -1 index freezes
it: a channel cannot be removed where it stands for non-channel data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NOT_A_CHANNEL = -1


@dataclass(frozen=True)
class Cause:
    kind: str    # "input" | "output" | "barrier" | "constraint"
    node: str    # the fx node where it happened
    detail: str  # the op, and for constraints why


class Units:
    """Union-find over unit ids, with a set of freeze causes per class."""

    def __init__(self) -> None:
        self._parent: list[int] = []
        self._causes: dict[int, set[Cause]] = {}

    def __len__(self) -> int:
        return len(self._parent)

    def fresh(self, n: int) -> np.ndarray:
        start = len(self._parent)
        self._parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, u: int) -> int:
        parent = self._parent
        root = u
        while parent[root] != root:
            root = parent[root]
        while parent[u] != root:  # path compression
            parent[u], u = root, parent[u]
        return root

    def roots(self, labels: np.ndarray) -> np.ndarray:
        """Class root per index; -1 stays -1."""
        return np.array([self.find(int(u)) if u >= 0 else NOT_A_CHANNEL for u in labels],
                        dtype=np.int64)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if ra > rb:
            ra, rb = rb, ra
        self._parent[rb] = ra
        moved = self._causes.pop(rb, None)
        if moved:
            self._causes.setdefault(ra, set()).update(moved)

    def freeze(self, labels: np.ndarray, cause: Cause) -> None:
        for u in np.unique(labels[labels >= 0]):
            self._causes.setdefault(self.find(int(u)), set()).add(cause)

    def unify(self, a: np.ndarray, b: np.ndarray, cause: Cause) -> None:
        """Tie a[i] to b[i] for every i; an index against a non-channel index freezes."""
        if a.shape != b.shape:
            raise ValueError(f"cannot unify dims of sizes {a.shape[0]} and {b.shape[0]}")
        both = (a >= 0) & (b >= 0)
        for u, v in zip(a[both].tolist(), b[both].tolist()):
            if u != v:
                self.union(u, v)
        self.freeze(a[(a >= 0) & (b < 0)], cause)
        self.freeze(b[(b >= 0) & (a < 0)], cause)

    def unify_all(self, labels: np.ndarray, cause: Cause) -> None:
        """Tie every index of `labels` into one class."""
        ids = np.unique(labels[labels >= 0])
        for u in ids[1:].tolist():
            self.union(int(ids[0]), u)
        if (labels < 0).any():
            self.freeze(labels, cause)

    def causes(self, u: int) -> frozenset[Cause]:
        return frozenset(self._causes.get(self.find(u), ()))

    def is_frozen(self, u: int) -> bool:
        return bool(self._causes.get(self.find(u)))
