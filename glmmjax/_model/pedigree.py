"""Pedigrees: the numerator relationship matrix A and its sparse inverse (Henderson).

A pedigree lists each animal with its sire and dam (unknown parents missing). With the
animals in an order where parents come before their offspring, A = T·D·T' where
T = (I − P)⁻¹, P holds ½ at (animal, sire) and (animal, dam), and D is diagonal with the
Mendelian sampling variances

    dᵢ = ½ − ¼(F_s + F_d)   both parents known
    dᵢ = ¾ − ¼·F_p          one parent p known
    dᵢ = 1                  none known

(F: inbreeding coefficients). So A⁻¹ = (I − P)'·D⁻¹·(I − P) has at most a handful of
non-zeros per animal (Henderson 1976; Quaas 1976), and log|A| = Σ log dᵢ. This is what
makes an animal model with tens of thousands of animals cheap: the mixed-model
equations stay sparse (:mod:`glmmjax._engines.host.sparse_lmm`), while A itself, and its Cholesky
factor for a deep pedigree, are nearly dense.

The inbreeding coefficients are F_i = ½·A_{s,d}. They are computed generation by
generation (every animal's parents in earlier generations), taking the columns of A for
one parent of each pair as A·e = T·D·(T'·e): two sparse triangular solves with I − P
(Colleau 2002's indirect method), where D is already known for every ancestor. Work is
about (number of distinct parents) × (pedigree size), no matrix of size q × q is formed.

All checks (duplicate animals, parents that are not listed, cycles) run when the
pedigree is built, in numpy, and say what is wrong with which animals.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import pandas as pd
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg


class PedigreeError(ValueError):
    """A pedigree that cannot be used (duplicates, unknown parents, cycles)."""


def _label(value) -> str:
    """A level label as the design names levels (``str``), with floats that hold
    integers (an integer column with missing parents, read by pandas) as integers."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _column(values, what: str) -> list:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise PedigreeError(f"Pedigree: {what} must be a sequence (list, array, Series) of "
                            f"labels, got {type(values).__name__}")
    return list(values.tolist() if hasattr(values, "tolist") else values)


def _show(labels, limit: int = 10) -> str:
    labels = list(labels)
    return f"{labels[:limit]}{' ...' if len(labels) > limit else ''}"


class Pedigree:
    """A pedigree: each animal with its sire and dam, for ``relmat={"animal": ped}``.

    Args:
        animal: the animals' labels (unique; they name the levels of the grouping
            factor in the data, compared as strings, so 7 and "7" are the same animal).
        sire, dam: each animal's parents; a missing value (None, NaN) or ``unknown``
            marks an unknown parent.
        unknown: a further label meaning "unknown parent" (e.g. 0 or "0").
        add_founders: parents that are not listed as animals are an error unless this is
            True; then they are added as founders (both parents unknown), as pedigreemm's
            ``editPed`` does.

    Raises:
        PedigreeError: lengths differ, an animal is missing or listed twice, a parent is
            not listed (without ``add_founders``), or an animal is its own ancestor.

    Example:
        >>> import glmmjax
        >>> ped = glmmjax.Pedigree(animal=[1, 2, 3, 4], sire=[None, None, 1, 1],
        ...                        dam=[None, None, 2, 3])
        >>> ped.inbreeding.tolist()
        [0.0, 0.0, 0.0, 0.25]
    """

    def __init__(self, animal, sire, dam, *, unknown=None, add_founders: bool = False):
        animals = _column(animal, "animal")
        sires = _column(sire, "sire")
        dams = _column(dam, "dam")
        if not (len(animals) == len(sires) == len(dams)):
            raise PedigreeError(f"Pedigree: animal, sire and dam must have the same length, "
                                f"got {len(animals)}, {len(sires)} and {len(dams)}")
        if not animals:
            raise PedigreeError("Pedigree: no animals")
        if any(pd.isna(a) for a in animals):
            raise PedigreeError("Pedigree: animal has missing labels; every animal needs one")
        labels = [_label(a) for a in animals]
        if len(set(labels)) != len(labels):
            counts = pd.Series(labels).value_counts()
            raise PedigreeError(f"Pedigree: animals listed more than once: "
                                f"{_show(counts.index[counts > 1])}")
        missing_label = None if unknown is None else _label(unknown)

        def parent(value):
            if value is None or (not isinstance(value, str) and pd.isna(value)):
                return None
            value = _label(value)
            return None if value == missing_label else value

        sire_labels = [parent(v) for v in sires]
        dam_labels = [parent(v) for v in dams]
        known = set(labels)
        absent = list(dict.fromkeys(p for p in sire_labels + dam_labels
                                    if p is not None and p not in known))
        if absent:
            if not add_founders:
                raise PedigreeError(
                    f"Pedigree: {len(absent)} parent(s) are not listed as animals: "
                    f"{_show(absent)}; list them (with unknown parents) or pass "
                    "add_founders=True to add them as founders")
            labels = absent + labels
            sire_labels = [None] * len(absent) + sire_labels
            dam_labels = [None] * len(absent) + dam_labels
        position = {label: i for i, label in enumerate(labels)}
        s = np.array([-1 if p is None else position[p] for p in sire_labels], dtype=np.int64)
        d = np.array([-1 if p is None else position[p] for p in dam_labels], dtype=np.int64)
        own = np.flatnonzero((s == np.arange(len(s))) | (d == np.arange(len(d))))
        if own.size:
            raise PedigreeError(f"Pedigree: animal(s) listed as their own parent: "
                                f"{_show(labels[i] for i in own)}")
        generation = _generations(s, d, labels)
        order = np.argsort(generation, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        self.labels: tuple[str, ...] = tuple(labels[i] for i in order)
        self.generation = generation[order]
        self.sire = np.where(s[order] >= 0, rank[np.maximum(s[order], 0)], -1)
        self.dam = np.where(d[order] >= 0, rank[np.maximum(d[order], 0)], -1)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, animal: str = "animal", sire: str = "sire",
                   dam: str = "dam", **kwargs) -> Pedigree:
        """A pedigree from a DataFrame's columns (names given by ``animal``, ``sire``,
        ``dam``); further keywords as the constructor's."""
        for role, column in (("animal", animal), ("sire", sire), ("dam", dam)):
            if column not in frame.columns:
                raise PedigreeError(f"Pedigree.from_frame: no column {column!r} for {role}; "
                                    f"columns: {list(frame.columns)}")
        return cls(frame[animal], frame[sire], frame[dam], **kwargs)

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (f"Pedigree({len(self)} animals, {int(self.generation.max()) + 1} generations, "
                f"{int(np.sum((self.sire < 0) & (self.dam < 0)))} founders)")

    @cached_property
    def _i_minus_p(self) -> scipy.sparse.csr_matrix:
        q = len(self)
        rows, cols = [np.arange(q)], [np.arange(q)]
        values = [np.ones(q)]
        for parent in (self.sire, self.dam):
            has = np.flatnonzero(parent >= 0)
            rows.append(has)
            cols.append(parent[has])
            values.append(np.full(has.size, -0.5))
        # Duplicates (selfing: sire = dam) are summed: −1 at (i, p).
        return scipy.sparse.csr_matrix((np.concatenate(values),
                                        (np.concatenate(rows), np.concatenate(cols))),
                                       shape=(q, q))

    @cached_property
    def _inbreeding_and_d(self) -> tuple[np.ndarray, np.ndarray]:
        q = len(self)
        lower = self._i_minus_p
        upper = lower.T.tocsr()
        F = np.zeros(q)
        D = np.zeros(q)
        s, d = self.sire, self.dam
        chunk = max(1, min(256, 2**25 // max(q, 1)))
        for g in range(int(self.generation.max()) + 1):
            members = np.flatnonzero(self.generation == g)
            both = members[(s[members] >= 0) & (d[members] >= 0)]
            if both.size:
                rows, cols = s[both], d[both]
                if np.unique(rows).size < np.unique(cols).size:
                    rows, cols = cols, rows
                distinct, where = np.unique(cols, return_inverse=True)
                a_sd = np.empty(both.size)
                for start in range(0, distinct.size, chunk):
                    block = distinct[start:start + chunk]
                    unit = np.zeros((q, block.size))
                    unit[block, np.arange(block.size)] = 1.0
                    # A·e = T·D·T'·e with T = (I − P)⁻¹; D is zero for this and later
                    # generations, which are no ancestors of the parents.
                    x = scipy.sparse.linalg.spsolve_triangular(upper, unit, lower=False)
                    x *= D[:, None]
                    columns = scipy.sparse.linalg.spsolve_triangular(lower, x, lower=True)
                    inside = (where >= start) & (where < start + block.size)
                    a_sd[inside] = columns[rows[inside], where[inside] - start]
                F[both] = 0.5 * a_sd
            fs = np.where(s[members] >= 0, F[np.maximum(s[members], 0)], 0.0)
            fd = np.where(d[members] >= 0, F[np.maximum(d[members], 0)], 0.0)
            n_known = (s[members] >= 0).astype(int) + (d[members] >= 0)
            D[members] = np.select([n_known == 2, n_known == 1],
                                   [0.5 - 0.25 * (fs + fd), 0.75 - 0.25 * (fs + fd)], 1.0)
        return F, D

    @property
    def inbreeding(self) -> np.ndarray:
        """Inbreeding coefficients F (in the order of ``labels``)."""
        return self._inbreeding_and_d[0].copy()

    @property
    def mendelian_variances(self) -> np.ndarray:
        """The diagonal D of A = T·D·T' (Henderson's dᵢ)."""
        return self._inbreeding_and_d[1].copy()

    def inverse(self) -> scipy.sparse.csc_matrix:
        """A⁻¹ = (I − P)'·D⁻¹·(I − P), sparse, rows and columns in ``labels``' order."""
        lower = self._i_minus_p
        D = self._inbreeding_and_d[1]
        return (lower.T @ scipy.sparse.diags(1.0 / D) @ lower).tocsc()

    def log_det(self) -> float:
        """log|A| = Σ log dᵢ."""
        return float(np.sum(np.log(self._inbreeding_and_d[1])))

    def relationship_matrix(self) -> pd.DataFrame:
        """A as a dense DataFrame (index and columns: ``labels``); for small pedigrees
        (q² numbers): a dense ``relmat`` for ``glmer``, ``bayes`` or ``fit_many``."""
        q = len(self)
        if q > 20000:
            raise PedigreeError(f"Pedigree.relationship_matrix: {q} animals would make a "
                                f"dense {q}×{q} matrix; lmer fits the pedigree sparsely")
        T = scipy.linalg.solve_triangular(self._i_minus_p.toarray(), np.eye(q), lower=True)
        A = (T * self._inbreeding_and_d[1]) @ T.T
        return pd.DataFrame(A, index=list(self.labels), columns=list(self.labels))


def _generations(s: np.ndarray, d: np.ndarray, labels: list[str]) -> np.ndarray:
    """0 for founders, else 1 + the parents' largest generation; a cycle (an animal
    among its own ancestors) is an error naming the animals on it or behind it."""
    q = s.size
    generation = np.full(q, -1, dtype=np.int64)
    generation[(s < 0) & (d < 0)] = 0
    if not np.any(generation == 0):
        raise PedigreeError("Pedigree: no founders (every animal has a known parent): "
                            "the pedigree has a cycle")
    while True:
        open_ = np.flatnonzero(generation < 0)
        if open_.size == 0:
            return generation
        gs = np.where(s[open_] >= 0, generation[np.maximum(s[open_], 0)], 0)
        gd = np.where(d[open_] >= 0, generation[np.maximum(d[open_], 0)], 0)
        ready = (gs >= 0) & (gd >= 0)
        if not np.any(ready):
            raise PedigreeError(
                f"Pedigree: a cycle (animals among their own ancestors) involves or precedes "
                f"{_show(labels[i] for i in open_)}")
        generation[open_[ready]] = 1 + np.maximum(gs[ready], gd[ready])
