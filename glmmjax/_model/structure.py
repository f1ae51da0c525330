"""The sparsity structure of [Z X y]'W[Z X y], found once when a model is built.

Terms are ordered by decreasing number of levels. The first term's block of Z'WZ is
block diagonal (one S0×S0 block per level); we call everything after it the "rest": the
other terms' random effects, then the dense columns (X, and y for an LMM). The rest is
factored as a dense matrix. What couples the rest to the first term is sparse: a level
l of a later term meets only the levels j of the first term that share an observation
with it. We store those co-occurring (l, j) pairs and the static index lists needed to
form the Schur-complement update L_r0·L_r0' by gathers and segment sums (DESIGN.md:
"Keep the off-diagonal blocks sparse").

Everything here is numpy; the arrays become leaves of :class:`ReStructure`, a frozen
dataclass that is a JAX pytree once JAX is imported (:mod:`glmmjax._lazyjax`), whose
integer sizes are static, so one compiled objective serves every model with the same
structure.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

from .._lazyjax import jnp, pytree_dataclass, static_field
from .cov_structures import as_structures, term_structures
from .design import TermDesign

# Above this many (entry, entry) products per level, a dense matmul beats gathers.
_DENSE_ADVANTAGE = 8.0


@pytree_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class ReStructure:
    """Static description of the random-effects design and its coupling pattern.

    Sizes (static): ``sizes[t]`` = S_t, ``n_levels[t]`` = m_t, ``offsets[t]`` = where
    term t (t >= 1) starts in the rest dimension, ``n_dense`` = number of dense columns
    after the random effects in the rest (p, or p + 1 with y), ``rest_size`` = R.

    Arrays: ``refs[t]`` (n,), ``z[t]`` (n, S_t); for each later term t >= 1,
    ``pair_first[t-1]``/``pair_level[t-1]`` (level j of term 0 and level l of term t for
    each co-occurring pair) and ``obs_pair[t-1]`` (n,), the pair of each observation.
    ``entry_rest``/``entry_first`` give the rest row and term-0 level of each row of
    L_r0 (flattened, see ``coupling_rows``); ``update_a``/``update_b``/``update_flat``
    list the products that make up L_r0·L_r0' (sparse path only), each unordered pair
    once (a <= b; the matrix is symmetric).
    """

    sizes: tuple[int, ...] = static_field()
    n_levels: tuple[int, ...] = static_field()
    offsets: tuple[int, ...] = static_field()
    n_dense: int = static_field()
    rest_size: int = static_field()
    dense_update: bool = static_field()
    refs: tuple
    z: tuple
    pair_first: tuple
    pair_level: tuple
    obs_pair: tuple
    entry_rest: jnp.ndarray
    entry_first: jnp.ndarray
    update_a: jnp.ndarray
    update_b: jnp.ndarray
    update_flat: jnp.ndarray
    # Each term's map θ_t ↦ Λ_t (glmmjax._model.cov_structures); static, so models that differ
    # only in their structures compile separately.
    covariances: tuple = static_field(default=())

    @property
    def n_terms(self) -> int:
        return len(self.sizes)

    @property
    def n_re_rest(self) -> int:
        """Number of random effects in the rest (all terms but the first)."""
        return self.rest_size - self.n_dense

    @property
    def q(self) -> int:
        return sum(m * s for m, s in zip(self.n_levels, self.sizes))

    @property
    def n_theta(self) -> int:
        return sum(c.n_params for c in self.structures)

    @property
    def structures(self) -> tuple:
        """The terms' covariance structures (``us`` where none was given)."""
        return self.covariances or as_structures(self.sizes)


class PlainStructure:
    """A :class:`ReStructure`'s fields as plain attributes (and the original as
    ``original``), for the host engines (:mod:`glmmjax._engines.host.lmm`,
    :mod:`glmmjax._engines.host.glmm`): they read them thousands of times per fit, and
    the derived sizes (``n_theta``, ``structures``, properties of a ReStructure) are
    computed here once. ``cache`` holds index arrays they derive from the structure once."""

    def __init__(self, structure: ReStructure):
        for field in dataclasses.fields(structure):
            setattr(self, field.name, getattr(structure, field.name))
        self.original = structure
        self.n_terms = structure.n_terms
        self.n_re_rest = structure.n_re_rest
        self.n_theta = structure.n_theta
        self.structures = structure.structures
        self.cache: dict = {}


def split(v, s: ReStructure):
    """Flat inner variable -> (u_first (m0, S0), u_rest (R_re,), beta_in (k,)) (the GLMM
    engines' layout: the first term's effects by level, the rest's, then any inner
    fixed effects)."""
    m0, S0 = s.n_levels[0], s.sizes[0]
    q0 = m0 * S0
    return v[:q0].reshape(m0, S0), v[q0 : q0 + s.n_re_rest], v[q0 + s.n_re_rest :]


def plain_structure(structure) -> PlainStructure:
    return structure if isinstance(structure, PlainStructure) else PlainStructure(structure)


def _pairs_within_groups(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (a, b), a <= b, of indices with groups[a] == groups[b].

    Only one of (a, b) and (b, a) is listed: the Schur update and the selected inverse
    are symmetric, so half the gathers suffice (see ``_coupling_gram``).
    """
    # int32 throughout: these arrays have millions of entries on large crossed designs.
    order = np.argsort(groups, kind="stable").astype(np.int32)
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]]).astype(np.int32)
    counts = np.diff(np.r_[starts, np.int32(len(groups))]).astype(np.int32)
    # Position i in its group (of size c, starting at s) pairs with s+i .. s+c-1.
    position = np.arange(len(groups), dtype=np.int32) - np.repeat(starts, counts)
    count_of = np.repeat(counts, counts) - position
    a = np.repeat(np.arange(len(groups), dtype=np.int32), count_of)
    first_of = (np.cumsum(count_of, dtype=np.int64) - count_of).astype(np.int32)
    b = a + (np.arange(a.size, dtype=np.int32) - np.repeat(first_of, count_of))
    return order[a], order[b]


def _layout(terms, n_dense: int):
    """Each term's size and number of levels, the offsets of the later terms' random
    effects in the rest (the first term's entry is 0, unused), and the rest's size
    (those random effects plus the ``n_dense`` dense columns)."""
    sizes = tuple(t.size for t in terms)
    n_levels = tuple(t.n_levels for t in terms)
    offsets, position = [0], 0
    for term in terms[1:]:
        offsets.append(position)
        position += term.n_levels * term.size
    return sizes, n_levels, offsets, position + n_dense


def build_structure(
    terms: tuple[TermDesign, ...],
    n_dense: int,
    dense_update: bool | None = None,
    padding: dict | None = None,
) -> ReStructure:
    """Find the coupling pattern of ``terms`` (sorted, largest first).

    Args:
        terms: random-effects terms from :func:`glmmjax._model.design.build_design`.
        n_dense: number of dense columns after the random effects (p, or p + 1 when the
            response is appended as for an LMM).
        dense_update: force the dense (True) or sparse (False) Schur update.
        padding: common lengths ``{"obs", "pairs" (per later term), "updates"}`` for
            stacking several datasets (see :func:`stack_structures`). Padded
            observations have z = 0, padded pairs have no observations (zero coupling),
            and padded update products go to the discarded bin R·R.
    """
    from .sparse_relmat import refuse_sparse_terms

    refuse_sparse_terms(terms)
    first = terms[0]
    sizes, n_levels, offsets, rest_size = _layout(terms, n_dense)
    n_obs = first.refs.shape[0]
    target_obs = n_obs if padding is None else padding["obs"]

    def pad(a, length, value=0):
        a = np.asarray(a)
        width = [(0, length - a.shape[0])] + [(0, 0)] * (a.ndim - 1)
        return np.pad(a, width, constant_values=value)

    pair_first, pair_level, obs_pair = [], [], []
    entry_rest, entry_first = [], []
    for k, (term, offset) in enumerate(zip(terms[1:], offsets[1:])):
        key = first.refs.astype(np.int64) * term.n_levels + term.refs
        unique_keys, inverse = np.unique(key, return_inverse=True)
        j = (unique_keys // term.n_levels).astype(np.int32)
        level = (unique_keys % term.n_levels).astype(np.int32)
        if padding is not None:
            j, level = pad(j, padding["pairs"][k]), pad(level, padding["pairs"][k])
        pair_first.append(j)
        pair_level.append(level)
        obs_pair.append(pad(inverse.astype(np.int32), target_obs))
        comps = np.arange(term.size)
        entry_rest.append((offset + level[:, None] * term.size + comps).ravel())
        entry_first.append(np.repeat(j, term.size))
    dense_start = rest_size - n_dense
    entry_rest.append(np.tile(dense_start + np.arange(n_dense), first.n_levels))
    entry_first.append(np.repeat(np.arange(first.n_levels), n_dense))
    entry_rest = np.concatenate(entry_rest).astype(np.int32)
    entry_first = np.concatenate(entry_first).astype(np.int32)

    counts = np.bincount(entry_first, minlength=first.n_levels).astype(np.float64)
    sparse_cost = float(np.sum(counts**2)) * _DENSE_ADVANTAGE
    dense_cost = float(rest_size) ** 2 * first.n_levels
    if dense_update is None:
        dense_update = sparse_cost >= dense_cost
    if dense_update:
        a = b = flat = np.zeros(0, dtype=np.int32)
    else:
        a, b = _pairs_within_groups(entry_first)
        index_type = np.int32 if rest_size**2 < 2**31 - 1 else np.int64
        flat = entry_rest[a].astype(index_type) * rest_size + entry_rest[b]
        if padding is not None:
            n_updates = padding["updates"]
            a, b = pad(a, n_updates), pad(b, n_updates)
            flat = pad(flat, n_updates, rest_size * rest_size)
        a, b = a.astype(np.int32, copy=False), b.astype(np.int32, copy=False)
        flat = flat.astype(index_type, copy=False)

    as_float = [pad(np.asarray(t.z, dtype=np.float64), target_obs) for t in terms]
    return ReStructure(
        sizes=sizes,
        n_levels=n_levels,
        offsets=tuple(offsets),
        n_dense=n_dense,
        rest_size=rest_size,
        dense_update=bool(dense_update),
        refs=tuple(pad(np.asarray(t.refs, dtype=np.int32), target_obs) for t in terms),
        z=tuple(as_float),
        pair_first=tuple(pair_first),
        pair_level=tuple(pair_level),
        obs_pair=tuple(obs_pair),
        entry_rest=entry_rest,
        entry_first=entry_first,
        update_a=a,
        update_b=b,
        update_flat=flat,
        covariances=term_structures(terms),
    )


def stack_structures(term_lists: list, n_dense: int) -> ReStructure:
    """One structure per dataset, padded to common sizes and stacked on a leading axis.

    Every dataset's terms must already have equal level counts (pad the level lists);
    observation, pair and update counts may differ and are padded here.
    """
    plain = [build_structure(terms, n_dense) for terms in term_lists]
    dense = any(s.dense_update for s in plain)
    plain = [build_structure(terms, n_dense, dense_update=dense) for terms in term_lists]
    padding = {
        "obs": max(s.refs[0].shape[0] for s in plain),
        "pairs": tuple(max(s.pair_first[k].shape[0] for s in plain)
                       for k in range(len(plain[0].pair_first))),
        "updates": max(s.update_a.shape[0] for s in plain),
    }
    padded = [build_structure(terms, n_dense, dense_update=dense, padding=padding)
              for terms in term_lists]
    import jax

    return jax.tree_util.tree_map(lambda *a: np.stack(a), *padded)


class ArrayTerm:
    """A random-effects term given by arrays alone (``MixedModel.from_arrays``): the
    level index of each observation, its (n, S) model matrix and the number of levels.
    Duck-types the parts of :class:`glmmjax._model.design.TermDesign` that
    :func:`build_structure` reads."""

    def __init__(self, refs, z, n_levels: int):
        self.refs = refs
        self.z = z
        self.n_levels = int(n_levels)

    @property
    def size(self) -> int:
        return self.z.shape[1]


def is_traced(x) -> bool:
    # Nothing is traced where JAX was never imported.
    return "jax" in sys.modules and isinstance(x, sys.modules["jax"].core.Tracer)


def structure_for_arrays(terms, n_dense: int) -> ReStructure:
    """:func:`build_structure` for :class:`ArrayTerm` s whose level indices may be traced.

    With concrete indices this is :func:`build_structure` (the sparse coupling pattern,
    found with numpy). Under ``jax.jit`` the indices are abstract, so the pattern cannot
    depend on their values: every level of a later term is taken to meet every level of
    the first (all m_0·m_t pairs, each observation's pair computed by arithmetic), and
    the Schur update is formed densely. Same factor, more work when terms are large:
    build models with several crossed terms outside ``jit`` where you can.
    """
    if not any(is_traced(t.refs) for t in terms):
        concrete = [ArrayTerm(np.asarray(t.refs), np.asarray(t.z), t.n_levels) for t in terms]
        return build_structure(tuple(concrete), n_dense)
    first = terms[0]
    m0 = first.n_levels
    sizes, n_levels, offsets, rest_size = _layout(terms, n_dense)
    pair_first, pair_level, obs_pair, entry_rest, entry_first = [], [], [], [], []
    for term, offset in zip(terms[1:], offsets[1:]):
        m = term.n_levels
        j = np.repeat(np.arange(m0, dtype=np.int32), m)
        level = np.tile(np.arange(m, dtype=np.int32), m0)
        pair_first.append(j)
        pair_level.append(level)
        obs_pair.append((jnp.asarray(first.refs, jnp.int32) * m
                         + jnp.asarray(term.refs, jnp.int32)).astype(jnp.int32))
        comps = np.arange(term.size)
        entry_rest.append((offset + level[:, None] * term.size + comps).ravel())
        entry_first.append(np.repeat(j, term.size))
    dense_start = rest_size - n_dense
    entry_rest.append(np.tile(dense_start + np.arange(n_dense), m0))
    entry_first.append(np.repeat(np.arange(m0), n_dense))
    empty = np.zeros(0, dtype=np.int32)
    return ReStructure(
        sizes=sizes,
        n_levels=n_levels,
        offsets=tuple(offsets),
        n_dense=n_dense,
        rest_size=rest_size,
        dense_update=True,
        refs=tuple(jnp.asarray(t.refs, jnp.int32) for t in terms),
        z=tuple(t.z for t in terms),
        pair_first=tuple(pair_first),
        pair_level=tuple(pair_level),
        obs_pair=tuple(obs_pair),
        entry_rest=np.concatenate(entry_rest).astype(np.int32),
        entry_first=np.concatenate(entry_first).astype(np.int32),
        update_a=empty,
        update_b=empty,
        update_flat=empty,
        covariances=term_structures(terms),
    )
