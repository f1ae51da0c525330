"""Influence of each observation on a mixed model's fixed effects, by differentiating the fit.

Question: which observations of sleepstudy move the estimated average reaction time and
its slope over days the most? lme4 users answer with case-deletion diagnostics
(influence.ME, Cook's distance): refit the model once per observation left out. Here
the fit ``glmmjax.solve`` is a differentiable JAX function of the data, so one call

    J = jax.jacobian(lambda w: glmmjax.solve(model with weights w).beta)(ones)

gives d β̂ / d wᵢ for all 180 observations at once (implicit differentiation at the
optimum: no refit, no unrolled optimizer). Since deleting observation i sets wᵢ from 1
to 0, −J[:, i] is the first-order estimate of the change case deletion causes, which
the example checks against the 180 exact refits, themselves one ``jax.vmap`` of
``solve`` over weight vectors with one zero each. The same is done per subject (all of
a subject's rows deleted: influence.ME's group-level question), where the first-order
estimate is the sum of the subject's columns. The output shows where the linearization
serves: for single observations it tracks the refits closely (correlation 0.997 on
both coefficients; it understates the largest Cook's distances about twofold), while
removing a whole subject is no small perturbation (its random effect's shrinkage
changes non-linearly as its weight goes to 0): there the linear estimate is poor and
the vmapped refits, 18 fits in one call, are the answer.

Cook's distance of a deletion is D = Δβ' V⁻¹ Δβ / p with V the covariance of β̂.

Run:  python examples/influence.py [--out influence.png]     (about half a minute)
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

import glmmjax

FORMULA = "Reaction ~ Days + (Days | Subject)"


def _beta(model, weights):
    return glmmjax.solve(eqx.tree_at(lambda m: m.weights, model, weights)).beta


def influence(reml: bool = True) -> dict:
    """Linearized and exact effects of deleting each observation and each subject.

    Returns:
        dict with ``rows`` and ``subjects`` (DataFrames: per deletion the exact change of
        each coefficient, its first-order estimate from the Jacobian, and Cook's
        distance of each), ``jacobian`` (p, n) and ``beta`` (p,).
    """
    data = glmmjax.datasets.load("sleepstudy")
    with jax.enable_x64(True):
        model = glmmjax.MixedModel.from_formula(FORMULA, data, reml=reml)
        ones = jnp.ones(len(data))
        beta = jax.jit(_beta)(model, ones)
        jacobian = np.asarray(jax.jit(jax.jacobian(_beta, argnums=1))(model, ones))
        refits = jax.jit(jax.vmap(_beta, in_axes=(None, 0)))
        without_row = np.asarray(refits(model, 1.0 - jnp.eye(len(data))))
        subjects = pd.Categorical(data["Subject"])
        members = np.asarray(subjects.codes)[None, :] == np.arange(len(subjects.categories))[:, None]
        without_subject = np.asarray(refits(model, jnp.asarray(1.0 - members)))
        fit = glmmjax.lmer(FORMULA, data, reml=reml)
    names = list(fit.fixef.index)
    precision = np.linalg.inv(np.asarray(fit.vcov))
    beta = np.asarray(beta)

    def table(exact_change, linear_change, index):
        frame = pd.DataFrame(index=index)
        for k, name in enumerate(names):
            frame[f"d_{name}"] = exact_change[:, k]
            frame[f"d_{name}_linear"] = linear_change[:, k]
        frame["cooks_distance"] = np.einsum("ij,jk,ik->i", exact_change, precision,
                                            exact_change) / len(names)
        frame["cooks_distance_linear"] = np.einsum("ij,jk,ik->i", linear_change, precision,
                                                   linear_change) / len(names)
        return frame

    rows = table(without_row - beta, -jacobian.T, data.index)
    per_subject = table(without_subject - beta, -(members @ jacobian.T),
                        pd.Index(subjects.categories, name="Subject"))
    return {"rows": rows, "subjects": per_subject, "jacobian": jacobian, "beta": beta,
            "names": names}


def plot(result: dict, out) -> pathlib.Path | None:
    """Linearized vs exact deletion effects (rows, subjects); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    for ax, name in zip(axes[:2], result["names"]):
        for key, marker, label in (("rows", ".", "one observation"),
                                   ("subjects", "o", "one subject")):
            frame = result[key]
            ax.scatter(frame[f"d_{name}"], frame[f"d_{name}_linear"], marker=marker,
                       s=14 if marker == "." else 30, label=label, alpha=0.8)
        lim = np.abs(np.concatenate([result[k][f"d_{name}"] for k in ("rows", "subjects")])).max()
        ax.plot([-lim, lim], [-lim, lim], color="grey", lw=0.8)
        ax.set_xlabel(f"change of {name} by refit")
        ax.set_ylabel("−dβ̂/dw (one jacobian call)")
        ax.legend(fontsize=8)
    rows = result["rows"]
    axes[2].stem(np.arange(len(rows)), rows["cooks_distance"], markerfmt=".", basefmt=" ")
    axes[2].set_xlabel("observation")
    axes[2].set_ylabel("Cook's distance (case deletion)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return pathlib.Path(out)


def main(out: str | pathlib.Path | None = None, verbose: bool = True) -> dict:
    result = influence()
    if out is None:
        out = pathlib.Path(tempfile.gettempdir()) / "influence.png"
    result["plot_path"] = plot(result, out)
    if verbose:
        rows, subjects = result["rows"], result["subjects"]
        for key, frame in (("observations", rows), ("subjects", subjects)):
            corr = [np.corrcoef(frame[f"d_{n}"], frame[f"d_{n}_linear"])[0, 1]
                    for n in result["names"]]
            print(f"Deleting one of the {len(frame)} {key}: correlation of the "
                  f"jacobian's estimate with the refit, " +
                  ", ".join(f"{n} {c:.4f}" for n, c in zip(result["names"], corr)))
        print("\nMost influential observations (Cook's distance by refit and by jacobian):")
        top = rows.sort_values("cooks_distance", ascending=False).head(5)
        print(top[["cooks_distance", "cooks_distance_linear"]].to_string(float_format="{:.4f}".format))
        print("\nMost influential subjects:")
        top = subjects.sort_values("cooks_distance", ascending=False).head(5)
        print(top[["cooks_distance", "cooks_distance_linear"]].to_string(float_format="{:.4f}".format))
        path = result["plot_path"]
        print(f"\nPlot: {path}" if path else "\nPlot skipped (matplotlib not installed)")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="where to save the plot (PNG)")
    args = parser.parse_args()
    main(out=args.out)
