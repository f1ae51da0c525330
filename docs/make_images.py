"""Render the documentation's images into docs/images (pre-rendered: the docs build
does not run this). Run from the repository root:

    python docs/make_images.py            # a few minutes on a 2-core CPU
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import glmmjax  # noqa: E402

IMAGES = ROOT / "docs" / "images"


def example(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save(axes, name):
    fig = (axes if hasattr(axes, "savefig") else
           __import__("numpy").atleast_1d(axes).ravel()[0].figure)
    fig.tight_layout()
    fig.savefig(IMAGES / name, dpi=90)
    plt.close(fig)


def main(only=None):
    IMAGES.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore")
    sleep = glmmjax.datasets.load("sleepstudy")
    fit = glmmjax.lmer("Reaction ~ Days + (Days | Subject)", sleep)
    if only in (None, "lmm"):
        save(fit.plot_profile(), "profile.png")
        save(fit.plot_effect("Days"), "effect.png")
        save(fit.plot_caterpillar(), "caterpillar.png")
    if only in (None, "glm"):
        cbpp = glmmjax.datasets.load("cbpp")
        gm = glmmjax.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp,
                           family="binomial")
        save(gm.plot_effect("period"), "effect_glmm.png")
    if only in (None, "examples"):
        example("ab_test").main(out=IMAGES / "ab_test.png", verbose=False)
        example("customer_conversion").main(out=IMAGES / "roc.png", verbose=False)
        example("per_gene_de").main(n_genes=500, out=str(IMAGES / "volcano.png"))
        example("zero_inflated_counts").main(out=IMAGES / "zero_inflated.png", verbose=False)
    if only in (None, "bayes"):
        from glmmjax import bayes

        dyes = glmmjax.datasets.load("dyestuff")
        post = bayes.fit("Yield ~ 1 + (1 | Batch)", dyes, num_chains=2, num_warmup=300,
                         num_samples=300, chain_method="sequential", seed=1, warn=False)
        save(post.plot_posterior("sd"), "posterior.png")
        save(post.plot_ppc(num_draws=40), "ppc.png")
    if only in (None, "demand"):
        example("hierarchical_demand").main(out=IMAGES / "demand.png", verbose=False)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
