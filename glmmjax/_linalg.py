"""Cholesky factorizations and triangular solves that stay out of jaxlib's LAPACK calls
for small matrices.

Why: jaxlib 0.10's CPU LAPACK kernels (potrf, trsm, ...) split a large enough batch of
matrices (batch × flops ≥ 2·10⁵) over XLA:CPU's intra-op thread pool and then *wait*
for the pieces from inside that pool. When XLA runs as many such calls at once as the
pool has threads (two on a 2-core machine: independent solves of one while-loop body),
every pool thread waits for work queued behind itself and the program never finishes.
That was issue 16's hang: ``fit_many`` of 200 NB2 random-slope GLMMs, and a bootstrap
of sleepstudy, with every XLA thread parked in ``jax::ParallelBatchMap`` under
``lapack_dtrsm_ffi`` (native stacks in benchmarks/README.md). jaxlib 0.11 no longer
parallelizes these kernels in its open-source builds; PyPI offers nothing newer than
0.10.2 to this project's users today.

The batches that trigger it are glmmjax's many small blocks (one S×S block per level of
a random-effects term, for every model of a batch, with forward-mode tangents as extra
right-hand sides). For n ≤ :data:`SMALL` these functions are written out in jax.numpy
(n square roots and n² fused multiply-adds over the batch), which XLA compiles into
plain loops: no LAPACK call, no thread pool, and for 2×2 blocks faster than a LAPACK
call per block. Larger matrices go to LAPACK as before (one matrix per model is below
the threshold unless the batch holds hundreds of large models).
"""

from __future__ import annotations

from ._lazyjax import jnp

# Largest n written out by hand; n² terms per call keep compilation cheap up to here.
SMALL = 8


def cholesky(a):
    """Lower Cholesky factor of ``a`` (..., n, n); NaN where ``a`` is not positive
    definite, as ``jnp.linalg.cholesky``."""
    n = a.shape[-1]
    if n == 0:
        return a
    if n > SMALL:
        return jnp.linalg.cholesky(a)
    columns = [[None] * n for _ in range(n)]  # columns[i][j] = L[..., i, j]
    for j in range(n):
        pivot = a[..., j, j] - sum((columns[j][k] ** 2 for k in range(j)), 0.0)
        root = jnp.sqrt(pivot)
        columns[j][j] = root
        for i in range(j + 1, n):
            dot = sum((columns[i][k] * columns[j][k] for k in range(j)), 0.0)
            columns[i][j] = (a[..., i, j] - dot) / root
    zero = jnp.zeros_like(a[..., 0, 0])
    rows = [jnp.stack([columns[i][j] if j <= i else zero for j in range(n)], axis=-1)
            for i in range(n)]
    return jnp.stack(rows, axis=-2)


def solve_triangular(a, b, lower: bool = True, trans=0):
    """Solve ``a·x = b`` (``trans`` 0/"N") or ``a'·x = b`` (1/"T") for triangular ``a``
    (..., n, n) and ``b`` (..., n) or (..., n, k), as ``jax.scipy.linalg``'s."""
    n = a.shape[-1]
    if n == 0:
        return b
    vector = b.ndim == a.ndim - 1
    if n > SMALL:
        from jax.scipy.linalg import solve_triangular as _lapack_solve_triangular

        if vector:  # a batch of vectors: jax wants them as one-column matrices
            return _lapack_solve_triangular(a, b[..., None], lower=lower, trans=trans)[..., 0]
        return _lapack_solve_triangular(a, b, lower=lower, trans=trans)
    transposed = trans in (1, "T", "C")
    rhs = b[..., None] if vector else b

    def entry(i, k):  # the (i, k) entry of the matrix actually solved with
        return a[..., k, i] if transposed else a[..., i, k]

    # Forward substitution when the solved matrix is lower triangular, else backward.
    forward = lower != transposed
    order = range(n) if forward else range(n - 1, -1, -1)
    x = [None] * n
    done = []
    for i in order:
        acc = rhs[..., i, :]
        for k in done:
            acc = acc - entry(i, k)[..., None] * x[k]
        x[i] = acc / entry(i, i)[..., None]
        done.append(i)
    out = jnp.stack(x, axis=-2)
    return out[..., 0] if vector else out


def cho_solve(lower_factor, b):
    """Solve (L·L')·x = b from the lower factor L."""
    return solve_triangular(lower_factor, solve_triangular(lower_factor, b, lower=True),
                            lower=True, trans="T")
