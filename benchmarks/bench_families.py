"""First call of a GLMM of each family and link, against glmmTMB's, same machine, same run.

For every model a fresh Python process measures ``import glmmjax`` with the modules a
fit loads (JAX among them) and the first ``glmer`` fit (then a second fit), as a user
fitting one model in a notebook waits for them; the median over ``--repeats`` fresh processes is printed. In the same run one R
session loads glmmTMB, makes one warm-up fit of another model (cbpp, binomial-logit), and
times glmmTMB's first fit of each model (glmmTMB's templates are compiled in advance, so
a warm R session is its best case). Ratios: glmmTMB time / glmmjax time, for
import + fit and for the fit alone.

Models (issue 15):

* owls_nb2: ``SiblingNegotiation ~ FoodTreatment * SexParent + offset(log(BroodSize))
  + (1 | Nest)``, negative binomial (NB2, size estimated), glmmTMB's Owls (599 rows);
* gamma_log: ``y ~ x + (1 | g)``, Gamma with log link (tests/reference/data/gamma_glmm.csv);
* beta_logit: ``y ~ x + (1 | g)``, beta with logit link (tests/reference/data/beta_glmm.csv);
* contraception_probit: ``use ~ age + I(age^2) + urban + livch + (1 | district)``,
  binomial with probit link (1,934 rows);
* cbpp_cloglog: ``cbind(incidence, size - incidence) ~ period + (1 | herd)``, binomial
  with cloglog link.

glmmTMB's own families (issue 20; the models of tests/reference/glmm_families_tmb2.R):
owls_nbinom1, salamanders_nbinom1, salamanders_truncated_poisson / _nbinom2 / _nbinom1
(``count ~ spp + mined + (1 | site)`` on the positive counts), owls_genpois,
cbpp_betabinomial, sleepstudy_t_df5 (``Reaction ~ Days + (Days | Subject)``, Student-t
with df fixed at 5), sleepstudy_t (df estimated) and tweedie_log (``y ~ x + (1 | g)``,
power estimated; tests/reference/data/tweedie_glmm.csv); compois_under, compois_over
(Conway–Maxwell–Poisson, ν = 2 and 0.5) and ordbeta_glmm (ordered beta), the models of
tests/reference/glmm_tmb20.R (``--last-families``).

Run from the repository root (R with glmmTMB and mlmRev must be installed):

    python benchmarks/bench_families.py
    python benchmarks/bench_families.py --models owls_nb2 --repeats 5
    python benchmarks/bench_families.py --tmb-families      # issue 20's models only
    python benchmarks/bench_families.py --last-families     # compois and ordbeta
    python benchmarks/bench_families.py --glm               # glm of glmmTMB's families
    python benchmarks/bench_families.py --glm --glm-engine jax --repeats 1

``--glm``: GLMs (no random effects) of glmmTMB's families, ``glm`` against glmmTMB
(owls/salamanders nbinom1, the truncated counts, genpois, betabinomial, Student-t with
df fixed and estimated, Tweedie, compois and ordered beta; tests/reference/glm_tmb_host.R).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from _machine import describe  # benchmarks/ is sys.path[0] when run as a script
from _runs import python_worker, r_results

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "tests" / "reference"

# name: (formula, glmmjax family, link, data (bundled name or reference CSV),
#        R family expression, R data expression)
MODELS = {
    "owls_nb2": (
        "SiblingNegotiation ~ FoodTreatment * SexParent + offset(log(BroodSize)) + (1 | Nest)",
        "negative_binomial", "log", "owls", "nbinom2", "Owls"),
    "gamma_log": ("y ~ x + (1 | g)", "gamma", "log", "data/gamma_glmm.csv",
                  'Gamma(link = "log")',
                  'read.csv("data/gamma_glmm.csv", colClasses = c(g = "factor"))'),
    "beta_logit": ("y ~ x + (1 | g)", "beta", "logit", "data/beta_glmm.csv", "beta_family()",
                   'read.csv("data/beta_glmm.csv", colClasses = c(g = "factor"))'),
    "contraception_probit": ("use ~ age + I(age^2) + urban + livch + (1 | district)",
                             "binomial", "probit", "contraception",
                             'binomial(link = "probit")', "Contraception"),
    "cbpp_cloglog": ("cbind(incidence, size - incidence) ~ period + (1 | herd)", "binomial",
                     "cloglog", "cbpp", 'binomial(link = "cloglog")', "cbpp"),
}
_OWLS = "SiblingNegotiation ~ FoodTreatment * SexParent + offset(log(BroodSize)) + (1 | Nest)"
_SAL = "count ~ spp + mined + (1 | site)"
_POSITIVE = ("data/salamanders_positive.csv",
             'read.csv("data/salamanders_positive.csv", stringsAsFactors = TRUE)')
MODELS.update({
    "owls_nbinom1": (_OWLS, "nbinom1", "log", "owls", "nbinom1", "Owls"),
    "salamanders_nbinom1": (_SAL, "nbinom1", "log", "salamanders", "nbinom1", "Salamanders"),
    "salamanders_truncated_poisson": (_SAL, "truncated_poisson", "log", _POSITIVE[0],
                                      "truncated_poisson", _POSITIVE[1]),
    "salamanders_truncated_nbinom2": (_SAL, "truncated_nbinom2", "log", _POSITIVE[0],
                                      "truncated_nbinom2", _POSITIVE[1]),
    "salamanders_truncated_nbinom1": (_SAL, "truncated_nbinom1", "log", _POSITIVE[0],
                                      "truncated_nbinom1", _POSITIVE[1]),
    "owls_genpois": (_OWLS, "genpois", "log", "owls", "genpois", "Owls"),
    "cbpp_betabinomial": ("cbind(incidence, size - incidence) ~ period + (1 | herd)",
                          "betabinomial", "logit", "cbpp", "betabinomial", "cbpp"),
    # glmmjax "t_family:5" is StudentT(df=5); glmmTMB fixes psi = log(df) with map.
    "sleepstudy_t_df5": ("Reaction ~ Days + (Days | Subject)", "t_family:5", "identity",
                         "sleepstudy",
                         "t_family, start = list(psi = log(5)), map = list(psi = factor(NA))",
                         "sleepstudy"),
    "sleepstudy_t": ("Reaction ~ Days + (Days | Subject)", "t_family", "identity",
                     "sleepstudy", "t_family", "sleepstudy"),
    "tweedie_log": ("y ~ x + (1 | g)", "tweedie", "log", "data/tweedie_glmm.csv", "tweedie",
                    'read.csv("data/tweedie_glmm.csv", colClasses = c(g = "factor"))'),
})
_CMP_UNDER = 'read.csv("data/compois_under.csv", colClasses = c(g = "factor"))'
_CMP_OVER = 'read.csv("data/compois_over.csv", colClasses = c(g = "factor"))'
MODELS.update({
    # issue 20's last families (tests/reference/glmm_tmb20.R).
    "compois_under": ("y ~ x + (1 | g)", "compois", "log", "data/compois_under.csv",
                      "compois", _CMP_UNDER),
    "compois_over": ("y ~ x + (1 | g)", "compois", "log", "data/compois_over.csv",
                     "compois", _CMP_OVER),
    # glmmTMB 1.1.5 starts ordbeta's cutpoints at (0, 0), where the likelihood is NaN.
    "ordbeta_glmm": ("y ~ x + (1 | g)", "ordbeta", "logit", "data/ordbeta_glmm.csv",
                     "ordbeta, start = list(psi = c(-1, 1))",
                     'read.csv("data/ordbeta_glmm.csv", colClasses = c(g = "factor"))'),
})
LAST_FAMILIES = ["compois_under", "compois_over", "ordbeta_glmm"]
_OWLS_GLM = "SiblingNegotiation ~ FoodTreatment * SexParent + offset(log(BroodSize))"
_SAL_GLM = "count ~ spp + mined"
# GLMs (no random effects) of glmmTMB's families, ``glm`` against glmmTMB (``--glm``):
# the models of tests/reference/glm_tmb_host.R and the GLMs of glmm_families_tmb2.R and
# glmm_tmb20.R (glmmTMB 1.1.5 has no lognormal).
GLM_MODELS = {
    "owls_nbinom1_glm": (_OWLS_GLM, "nbinom1", "log", "owls", "nbinom1", "Owls"),
    "salamanders_nbinom1_glm": (_SAL_GLM, "nbinom1", "log", "salamanders", "nbinom1",
                                "Salamanders"),
    "salamanders_truncated_poisson_glm": (_SAL_GLM, "truncated_poisson", "log", _POSITIVE[0],
                                          "truncated_poisson", _POSITIVE[1]),
    "salamanders_truncated_nbinom2_glm": (_SAL_GLM, "truncated_nbinom2", "log", _POSITIVE[0],
                                          "truncated_nbinom2", _POSITIVE[1]),
    "salamanders_truncated_nbinom1_glm": (_SAL_GLM, "truncated_nbinom1", "log", _POSITIVE[0],
                                          "truncated_nbinom1", _POSITIVE[1]),
    "owls_genpois_glm": (_OWLS_GLM, "genpois", "log", "owls", "genpois", "Owls"),
    "cbpp_betabinomial_glm": ("cbind(incidence, size - incidence) ~ period", "betabinomial",
                              "logit", "cbpp", "betabinomial", "cbpp"),
    "sleepstudy_t_df5_glm": ("Reaction ~ Days", "t_family:5", "identity", "sleepstudy",
                             "t_family, start = list(psi = log(5)), "
                             "map = list(psi = factor(NA))", "sleepstudy"),
    "t_glm": ("y ~ x", "t_family", "identity", "data/t_glm.csv", "t_family",
              'read.csv("data/t_glm.csv")'),
    "tweedie_glm": ("y ~ x", "tweedie", "log", "data/tweedie_glmm.csv", "tweedie",
                    'read.csv("data/tweedie_glmm.csv")'),
    "compois_glm": ("y ~ x", "compois", "log", "data/compois_under.csv", "compois",
                    'read.csv("data/compois_under.csv")'),
    "ordbeta_glm": ("y ~ x", "ordbeta", "logit", "data/ordbeta_glmm.csv",
                    "ordbeta, start = list(psi = c(-1, 1))", 'read.csv("data/ordbeta_glmm.csv")'),
}
MODELS.update(GLM_MODELS)
TMB_FAMILIES = [name for name in MODELS if name not in (
    "owls_nb2", "gamma_log", "beta_logit", "contraception_probit", "cbpp_cloglog")
    and name not in GLM_MODELS]
DEFAULT_MODELS = [name for name in MODELS if name not in GLM_MODELS]


def _family(glmmjax, name: str, link: str):
    if name.startswith("t_family:"):
        return glmmjax.families.StudentT(df=float(name.split(":")[1]), link=link)
    return glmmjax.families.get_family(name, link=link)


def _worker(name: str) -> None:
    formula, family, link, source, _, _ = MODELS[name]
    engine = os.environ.get("BENCH_GLM_ENGINE") or None  # glm's engine= (``--glm-engine``)
    start = time.perf_counter()
    import glmmjax
    if name in GLM_MODELS:
        import glmmjax._glm  # noqa: F401  (the fit's modules, JAX included)
        import glmmjax._results.glm  # noqa: F401
    else:
        import glmmjax._engines.host.glmm  # noqa: F401  JAX included, load on first use)
        import glmmjax._glmer  # noqa: F401  (``import glmmjax`` is lazy: the fit's modules,

    t_import = time.perf_counter()
    if source.endswith(".csv"):
        import pandas as pd

        data = pd.read_csv(REFERENCE / source, dtype={"g": str, "site": str})
    else:
        data = glmmjax.datasets.load(source)
    t_data = time.perf_counter()
    if name in GLM_MODELS:
        from glmmjax._engines.seam import choose_glm

        fam = _family(glmmjax, family, link)
        fit = glmmjax.glm(formula, data, family=fam, engine=engine)
        t_first = time.perf_counter()
        glmmjax.glm(formula, data, family=fam, engine=engine)
        t_second = time.perf_counter()
        deviance, fitted_engine = -2.0 * fit.loglik, choose_glm(fam, engine)
    else:
        fit = glmmjax.glmer(formula, data, family=_family(glmmjax, family, link))
        t_first = time.perf_counter()
        glmmjax.glmer(formula, data, family=_family(glmmjax, family, link))
        t_second = time.perf_counter()
        deviance, fitted_engine = fit.deviance, fit.engine
    print(json.dumps({
        "import": t_import - start, "first_fit": t_first - t_data,
        "second_fit": t_second - t_first,
        "import_and_fit": t_first - start - (t_data - t_import),
        "deviance": deviance, "engine": fitted_engine, "converged": fit.converged,
    }))


def _python(name: str) -> dict:
    # This checkout's glmmjax, whatever else is installed.
    return python_worker(__file__, name, ROOT)


def _glmmtmb(names) -> dict:
    """glmmTMB's first fit of each model in one warm R session: {name: (seconds, −2 log L)}."""
    lines = [
        "suppressPackageStartupMessages({library(glmmTMB); library(lme4); library(mlmRev)})",
        "data(Owls, package = 'glmmTMB'); data(Contraception, package = 'mlmRev')",
        "data(Salamanders, package = 'glmmTMB')",
        "invisible(glmmTMB(cbind(incidence, size - incidence) ~ period + (1 | herd), "
        "data = cbpp, family = binomial))  # warm-up",
    ]
    for name in names:
        formula, _, _, _, family, data = MODELS[name]
        lines += [
            f"d <- {data}",
            "t0 <- proc.time()[['elapsed']]",
            f"f <- glmmTMB({formula}, data = d, family = {family})",
            "t1 <- proc.time()[['elapsed']]",
            f"cat(sprintf('RESULT %s %.6f %.10f\\n', '{name}', t1 - t0, -2 * as.numeric(logLik(f))))",
        ]
    return r_results(lines, REFERENCE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=DEFAULT_MODELS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tmb-families", action="store_true",
                        help="glmmTMB's own families only (issue 20)")
    parser.add_argument("--last-families", action="store_true",
                        help="compois and ordbeta only (issue 20's last families)")
    parser.add_argument("--glm", action="store_true",
                        help="GLMs of glmmTMB's families (glm against glmmTMB)")
    parser.add_argument("--glm-engine", choices=["host", "jax"], default=None,
                        help="glm's engine= for --glm (default: the seam's choice)")
    parser.add_argument("--worker", choices=list(MODELS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker)
        return
    if args.tmb_families:
        args.models = TMB_FAMILIES
    if args.last_families:
        args.models = LAST_FAMILIES
    if args.glm:
        args.models = list(GLM_MODELS)
    if args.glm_engine:
        os.environ["BENCH_GLM_ENGINE"] = args.glm_engine
    print(describe())
    tmb = _glmmtmb(args.models)
    print(f"{'model':30s} {'import+fit':>10s} {'fit':>7s} {'2nd fit':>7s} {'glmmTMB':>8s} "
          f"{'ratio i+f':>9s} {'ratio fit':>9s}  engine  Δdeviance (ours − glmmTMB)")
    for name in args.models:
        runs = [_python(name) for _ in range(args.repeats)]
        med = {k: statistics.median(r[k] for r in runs)
               for k in ("import_and_fit", "first_fit", "second_fit")}
        seconds, deviance = tmb[name]
        print(f"{name:30s} {med['import_and_fit']:9.2f}s {med['first_fit']:6.2f}s "
              f"{med['second_fit']:6.2f}s {seconds:7.2f}s {seconds / med['import_and_fit']:8.2f}x "
              f"{seconds / med['first_fit']:8.2f}x  {runs[0]['engine']:6s}  "
              f"{runs[0]['deviance'] - deviance:+.2e}")
    print(f"load average at end {', '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"medians of {args.repeats} fresh processes")


if __name__ == "__main__":
    main()
