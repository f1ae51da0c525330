"""Vectorized NUTS chains, compiled once per model structure.

NumPyro's ``MCMC`` compiles its sampling loop again for every ``MCMC`` object, and that
compilation (tens of seconds on a small CPU) dwarfs the sampling itself for small mixed
models. Here the whole run (initial points, warmup with step-size and mass-matrix
adaptation, sampling, the map back to constrained values) is one ``jax.jit`` function
of the data, the priors' parameters and the response, with the parameter layout and
the sampler settings as static arguments. JAX's cache then reuses the compiled run for
every model of the same structure and sizes: refits, other data of the same shape, new
priors of the same families.

Chains advance together under ``jax.vmap`` (NumPyro's ``chain_method="vectorized"``),
which keeps a GPU busy; each chain may have its own response vector, which is how
``BayesModel.sample_many`` fits many simulated data sets in one run. The NUTS kernel is
NumPyro's (``numpyro.infer.hmc.hmc``), with its windowed adaptation.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from numpyro.infer.hmc import hmc
from numpyro.infer.util import constrain_fn, potential_energy

from .._progress import compile_note


@dataclasses.dataclass(frozen=True)
class Settings:
    """Static sampler settings (part of the compilation key)."""

    num_warmup: int
    num_samples: int
    target_accept: float
    max_tree_depth: int
    dense_mass: bool
    progress_every: int  # 0: no progress bar


_PROGRESS = {"bar": None, "offset": 0}


def _report_progress(iteration):
    bar = _PROGRESS["bar"]
    if bar is not None:
        # Sequential chains share one bar: each run of the program adds its offset.
        bar.n = _PROGRESS["offset"] + int(iteration)
        bar.refresh()


def _maybe_report(settings: Settings, i):
    if settings.progress_every:
        jax.lax.cond(
            (i + 1) % settings.progress_every == 0,
            lambda: jax.debug.callback(_report_progress, i + 1),
            lambda: None,
        )


def _latent_sites(model, args, y):
    """Sampled (not observed) sites: name -> (support transform, unconstrained shape)."""
    trace = handlers.trace(handlers.seed(model, jax.random.PRNGKey(0))).get_trace(*args, y=y)
    sites = {}
    for name, site in trace.items():
        if site["type"] == "sample" and not site["is_observed"]:
            transform = biject_to(site["fn"].support)
            sites[name] = (transform, transform.inverse_shape(site["fn"].shape()))
    return sites


def _initial_point(sites, centres, key, radius):
    """Unconstrained start: the centre (constrained values by name, else 0) plus
    Uniform(−radius, radius) jitter."""
    params, centre_only = {}, {}
    for i, (name, (transform, shape)) in enumerate(sorted(sites.items())):
        centre = jnp.zeros(shape)
        if name in centres:
            value = transform.inv(jnp.asarray(centres[name], dtype=centre.dtype))
            centre = jnp.where(jnp.isfinite(value), value, 0.0)
        jitter = jax.random.uniform(jax.random.fold_in(key, i), shape, minval=-radius, maxval=radius)
        params[name] = centre + jitter
        centre_only[name] = centre
    return params, centre_only


@functools.partial(jax.jit, static_argnums=0)
def _potential(model, args, y, params):
    # A jitted inner function is traced once, however often NUTS calls it while its
    # loops are traced (several times per iteration body).
    return potential_energy(model, args, {"y": y}, params)


@functools.partial(jax.jit, static_argnames=("model", "settings"))
def run_chains(model, settings: Settings, keys, args, ys, centres):
    """Run ``len(keys)`` NUTS chains of ``model(*args, y=ys[c])``.

    Args:
        model: the NumPyro model (hashable: equal models share the compiled run).
        keys: (C, 2) PRNG keys, one per chain.
        args: the model's positional arguments (pytrees of arrays).
        ys: (C, n) the response of each chain, or (n,) one response for all chains
            (then unbatched under vmap: per-row terms of the likelihood that depend
            only on y stay shared instead of being recomputed for every chain).
        centres: constrained starting values by site name (see ``_initial_point``).

    Returns:
        ``(samples, diverging, num_steps, step_size)``: constrained samples by site,
        (C, N, ...); (C, N) divergences and leapfrog steps; (C,) adapted step sizes.
    """
    compile_note("the NUTS sampler")  # runs while jax traces, i.e. before compiling
    shared = ys.ndim == 1
    y_axis = None if shared else 0
    y0 = ys if shared else ys[0]
    sites = _latent_sites(model, args, y0)

    def potential_gen(y):
        return lambda params: _potential(model, args, y, params)

    init_kernel, sample_kernel = hmc(potential_fn_gen=potential_gen, algo="NUTS")

    def init_one(key, y):
        key_init, key_run = jax.random.split(key)
        jittered, centre = _initial_point(sites, centres, key_init, 1.0)
        finite = jnp.isfinite(_potential(model, args, y, jittered))
        start = jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), jittered, centre)
        return init_kernel(
            start,
            settings.num_warmup,
            target_accept_prob=settings.target_accept,
            max_tree_depth=settings.max_tree_depth,
            dense_mass=settings.dense_mass,
            model_args=(y,),
            rng_key=key_run,
        )

    kernel = lambda state, y: sample_kernel(state, model_args=(y,))  # noqa: E731
    if keys.shape[0] == 1:
        # One chain needs no vmap, whose batching of NUTS's nested while loops makes
        # tracing and compiling several times slower.
        states = jax.tree_util.tree_map(lambda a: a[None], init_one(keys[0], y0))
        step = lambda state, ys: jax.tree_util.tree_map(  # noqa: E731
            lambda a: a[None],
            kernel(jax.tree_util.tree_map(lambda a: a[0], state), ys if shared else ys[0]),
        )
    else:
        states = jax.vmap(init_one, in_axes=(0, y_axis))(keys, ys)
        step = jax.vmap(kernel, in_axes=(0, y_axis))

    # One loop over warmup and sampling (the NUTS body is compiled once): iteration i
    # writes its draw to row max(i − W, 0) of the buffers, which the sampling
    # iterations then overwrite in order.
    record = lambda state: (state.z, state.diverging, state.num_steps)  # noqa: E731
    template = jax.eval_shape(record, states)
    buffers = jax.tree_util.tree_map(
        lambda leaf: jnp.zeros((settings.num_samples,) + leaf.shape, leaf.dtype), template
    )

    def body(i, carry):
        state, buffers = carry
        _maybe_report(settings, i)
        state = step(state, ys)
        row = jnp.maximum(i - settings.num_warmup, 0)
        buffers = jax.tree_util.tree_map(
            lambda buf, new: jax.lax.dynamic_update_index_in_dim(buf, new, row, 0),
            buffers, record(state),
        )
        return state, buffers

    total = settings.num_warmup + settings.num_samples
    states, (z, diverging, num_steps) = jax.lax.fori_loop(0, total, body, (states, buffers))
    constrain = lambda params, y: constrain_fn(model, args, {"y": y}, params)  # noqa: E731
    samples = jax.vmap(jax.vmap(constrain, in_axes=(0, y_axis)), in_axes=(0, None))(z, ys)
    samples = jax.tree_util.tree_map(lambda a: jnp.swapaxes(a, 0, 1), samples)
    return samples, diverging.T, num_steps.T, states.adapt_state.step_size
