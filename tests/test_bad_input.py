"""A catalogue of bad or degenerate inputs across every public entry point, each with the
outcome it must keep: the error type and the names its message must mention, or the
warning and the status a fit reports.

Errors must come before any JAX compilation (``test_input_errors`` checks JAX's compile
log), so these cases are fast; the few that fit use tiny data on the host engines, and
those that need the compiled engines are marked slow.
"""

from __future__ import annotations

import contextlib
import io
import logging
import pathlib
import warnings

import jax
import numpy as np
import pandas as pd
import pytest

import glmmjax
from glmmjax import ConvergenceWarning, DataError, FormulaError, SeparationWarning
from glmmjax.families import Family, NegativeBinomial, Poisson

N = 60


def _frame(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=N)
    g = np.repeat(np.arange(6), 10)
    return pd.DataFrame(dict(
        y=rng.normal(size=N) + 0.5 * x + np.repeat(rng.normal(size=6), 10),
        x=x,
        f=np.tile(["a", "b", "c"], 20),
        g=g,
        c=rng.poisson(np.exp(0.5 + 0.3 * x)),
        b=rng.integers(0, 2, size=N),
        t=np.full(N, 5),
        s=rng.integers(0, 6, size=N),
    ))


@pytest.fixture(scope="module")
def ctx():
    d = _frame()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = glmmjax.lmer("y ~ x + f + (1 | g)", d)
        gm = glmmjax.glmer("c ~ x + (1 | g)", d, family="poisson")
        gl = glmmjax.glm("y ~ x + f", d)
    return dict(d=d, lm=lm, gm=gm, gl=gl, n=N)


def _dup_index(d):
    return d.set_axis([0] * len(d))


def _dup_column(d):
    out = d[["y", "x", "x", "g"]].copy()
    return out


def _cli(args) -> tuple[int, str]:
    from glmmjax._cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, err.getvalue()


_CSV: dict = {}


def _csv(d) -> str:
    if "path" not in _CSV:
        import tempfile

        path = pathlib.Path(tempfile.mkdtemp()) / "bad_input.csv"
        d.to_csv(path, index=False)
        _CSV["path"] = str(path)
    return _CSV["path"]


def _cli_error(args, needle):
    def run(c):
        code, err = _cli([a.replace("{csv}", _csv(c["d"])) for a in args])
        assert code == 2, err
        assert err.startswith("glmmjax: error:") and err.count("\n") == 1, err
        raise DataError(err.strip())  # so the catalogue checks it like the others

    return run, DataError, [needle]


lm_, glmer_, glm_ = glmmjax.lmer, glmmjax.glmer, glmmjax.glm

# (id, call(ctx), expected exception, substrings its message must contain)
ERRORS = [
    # -- glm --------------------------------------------------------------------------------
    ("glm-no-tilde", lambda c: glm_("y x", c["d"]), FormulaError, ["response ~ terms"]),
    ("glm-unknown-column", lambda c: glm_("y ~ zz", c["d"]), DataError, ["'zz'", "available"]),
    ("glm-unknown-family", lambda c: glm_("y ~ x", c["d"], family="poison"), ValueError,
     ["'poison'", "poisson"]),
    ("glm-link-not-allowed", lambda c: Poisson(link="logit"), ValueError, ["'logit'", "log"]),
    ("glm-binomial-counts", lambda c: glm_("c ~ x", c["d"], family="binomial"), DataError,
     ["binomial response", "rows"]),
    ("glm-poisson-negative", lambda c: glm_("y ~ x", c["d"], family="poisson"), DataError,
     ["Poisson", "rows"]),
    ("glm-data-list", lambda c: glm_("y ~ x", [1, 2]), DataError, ["DataFrame", "list"]),
    ("glm-data-empty", lambda c: glm_("y ~ x", c["d"].iloc[:0]), DataError, ["no rows"]),
    ("glm-weights-length", lambda c: glm_("y ~ x", c["d"], weights=np.ones(3)), DataError,
     ["weights", "(60)"]),
    ("glm-weights-negative", lambda c: glm_("y ~ x", c["d"], weights=-np.ones(N)), DataError,
     ["weights", "non-negative"]),
    ("glm-weights-zero", lambda c: glm_("y ~ x", c["d"], weights=np.zeros(N)), DataError,
     ["weights are zero"]),
    ("glm-weights-text-array", lambda c: glm_("y ~ x", c["d"], weights=["a"] * N), DataError,
     ["weights", "numeric"]),
    ("glm-weights-text-column", lambda c: glm_("y ~ x", c["d"], weights="f"), DataError,
     ["weights='f'", "numeric"]),
    ("glm-max-iter-zero", lambda c: glm_("y ~ x", c["d"], max_iter=0), ValueError, ["max_iter"]),
    ("glm-max-iter-text", lambda c: glm_("y ~ x", c["d"], max_iter="5"), ValueError,
     ["max_iter"]),
    ("glm-tol-negative", lambda c: glm_("y ~ x", c["d"], tol=-1.0), ValueError, ["tol"]),
    ("glm-inf-predictor", lambda c: glm_("y ~ x", c["d"].assign(x=np.r_[np.inf, c["d"].x[1:]])),
     DataError, ["'x'", "inf"]),
    ("glm-all-missing", lambda c: glm_("y ~ x", c["d"].assign(x=np.nan)), DataError,
     ["no rows left"]),
    ("glm-offset-column-missing", lambda c: glm_("y ~ x", c["d"], offset="nope"), DataError,
     ["offset='nope'"]),
    ("glm-gamma-zero", lambda c: glm_("c ~ x", c["d"], family="gamma"), DataError,
     ["Gamma", "positive"]),
    ("glm-random-term", lambda c: glm_("y ~ x + (1 | g)", c["d"]), FormulaError,
     ["(1 | g)", "lmer"]),
    ("glm-formula-none", lambda c: glm_(None, c["d"]), FormulaError, ["formula"]),
    ("glm-text-response", lambda c: glm_("f ~ x", c["d"]), DataError, ["numeric response"]),
    ("glm-duplicated-index", lambda c: glm_("y ~ x", _dup_index(c["d"]), weights=np.ones(N)),
     DataError, ["index", "reset_index"]),
    ("glm-duplicated-column", lambda c: glm_("y ~ x", _dup_column(c["d"])), DataError,
     ["several columns named ['x']"]),
    # -- lmer -------------------------------------------------------------------------------
    ("lmer-no-random", lambda c: lm_("y ~ x", c["d"]), FormulaError, ["random-effects", "glm"]),
    ("lmer-one-group", lambda c: lm_("y ~ x + (1 | g)", c["d"].assign(g=1)), DataError,
     ["'g'", "single level"]),
    ("lmer-too-many-effects", lambda c: lm_("y ~ x + (1 | r)", c["d"].assign(r=np.arange(N))),
     DataError, ["(1 | r)", "observations"]),
    ("lmer-unbalanced", lambda c: lm_("y ~ x + (1 | g", c["d"]), FormulaError, ["parenthes"]),
    ("lmer-reml-text", lambda c: lm_("y ~ x + (1 | g)", c["d"], reml="yes"), ValueError,
     ["reml"]),
    ("lmer-engine", lambda c: lm_("y ~ x + (1 | g)", c["d"], engine="gpu"), ValueError,
     ["engine", "'gpu'"]),
    ("lmer-max-iter-zero", lambda c: lm_("y ~ x + (1 | g)", c["d"], max_iter=0), ValueError,
     ["max_iter"]),
    ("lmer-max-iter-float", lambda c: lm_("y ~ x + (1 | g)", c["d"], max_iter=2.5),
     ValueError, ["max_iter"]),
    ("lmer-text-response", lambda c: lm_("f ~ x + (1 | g)", c["d"]), DataError,
     ["'f'", "numeric"]),
    ("lmer-constant-response", lambda c: lm_("y ~ x + (1 | g)", c["d"].assign(y=3.0)),
     DataError, ["'y'", "constant"]),
    ("lmer-exact-fit", lambda c: lm_("y ~ x + (1 | g)", c["d"].assign(y=2 * c["d"].x + 1)),
     DataError, ["'y'", "exactly"]),
    ("lmer-weights-zero", lambda c: lm_("y ~ x + (1 | g)", c["d"], weights=np.zeros(N)),
     DataError, ["weights are zero"]),
    ("lmer-cbind", lambda c: lm_("cbind(s, t - s) ~ x + (1 | g)", c["d"]), DataError,
     ["cbind", "glmer"]),
    ("lmer-group-all-missing", lambda c: lm_("y ~ x + (1 | g)", c["d"].assign(g=np.nan)),
     DataError, ["no rows left"]),
    ("lmer-weights-text", lambda c: lm_("y ~ x + (1 | g)", c["d"], weights="f"), DataError,
     ["weights='f'"]),
    ("lmer-duplicated-index", lambda c: lm_("y ~ x + (1 | g)", _dup_index(c["d"])), DataError,
     ["index", "reset_index"]),
    ("lmer-duplicated-column", lambda c: lm_("y ~ x + (1 | g)", _dup_column(c["d"])),
     DataError, ["several columns named ['x']"]),
    ("lmer-offset-length", lambda c: lm_("y ~ x + (1 | g)", c["d"], offset=np.ones(5)),
     DataError, ["offset", "(60)"]),
    # -- glmer ------------------------------------------------------------------------------
    ("glmer-agq-negative", lambda c: glmer_("c ~ x + (1 | g)", c["d"], "poisson", n_agq=-1),
     ValueError, ["n_agq"]),
    ("glmer-agq-float", lambda c: glmer_("c ~ x + (1 | g)", c["d"], "poisson", n_agq=1.5),
     ValueError, ["n_agq"]),
    ("glmer-agq-two-terms", lambda c: glmer_("c ~ x + (1 | g) + (1 | f)", c["d"], "poisson",
                                             n_agq=3), ValueError, ["single", "n_agq=1"]),
    ("glmer-host-agq", lambda c: glmer_("t ~ x + (1 | g)", c["d"], "gamma", n_agq=3,
                                        engine="host"),
     ValueError, ["engine='host'", "Gamma", "n_agq=3"]),
    ("glmer-engine", lambda c: glmer_("c ~ x + (1 | g)", c["d"], "poisson", engine="gpu"),
     ValueError, ["engine", "'gpu'"]),
    ("glmer-poisson-all-zero", lambda c: glmer_("c ~ x + (1 | g)", c["d"].assign(c=0),
                                                "poisson"), DataError, ["'c'", "zero"]),
    ("glmer-negbin-all-zero", lambda c: glmer_("c ~ x + (1 | g)", c["d"].assign(c=0),
                                               "negative_binomial"), DataError, ["'c'", "zero"]),
    ("glmer-binomial-all-one", lambda c: glmer_("b ~ x + (1 | g)", c["d"].assign(b=1)),
     DataError, ["'b'", "only successes"]),
    ("glmer-binomial-all-zero", lambda c: glmer_("b ~ x + (1 | g)", c["d"].assign(b=0)),
     DataError, ["'b'", "only failures"]),
    ("glmer-weights-zero", lambda c: glmer_("b ~ x + (1 | g)", c["d"], weights=np.zeros(N)),
     DataError, ["weights are zero"]),
    ("glmer-cbind-no-trials", lambda c: glmer_("cbind(s, t - s) ~ x + (1 | g)",
                                               c["d"].assign(s=0, t=0)),
     DataError, ["weights are zero"]),
    ("glmer-poisson-fractional", lambda c: glmer_("y ~ x + (1 | g)", c["d"].assign(y=0.5),
                                                  "poisson"), DataError, ["Poisson", "rows"]),
    ("glmer-binomial-three-levels", lambda c: glmer_("f ~ x + (1 | g)", c["d"]), DataError,
     ["two levels", "'c'"]),
    ("glmer-cbind-negative", lambda c: glmer_("cbind(s, t - 9) ~ x + (1 | g)", c["d"]),
     DataError, ["non-negative", "rows"]),
    ("glmer-gamma-constant", lambda c: glmer_("t ~ x + (1 | g)", c["d"], "gamma"), DataError,
     ["'t'", "constant"]),
    ("glmer-beta-boundary", lambda c: glmer_("b ~ x + (1 | g)", c["d"], "beta"), DataError,
     ["beta", "between 0 and 1"]),
    ("glmer-max-iter", lambda c: glmer_("c ~ x + (1 | g)", c["d"], "poisson", max_iter=-1),
     ValueError, ["max_iter"]),
    ("glmer-no-random", lambda c: glmer_("c ~ x", c["d"], "poisson"), FormulaError,
     ["random-effects"]),
    ("glmer-family-number", lambda c: glmer_("c ~ x + (1 | g)", c["d"], 3), ValueError,
     ["family"]),
    ("glmer-duplicated-index", lambda c: glmer_("b ~ x + (1 | g)", _dup_index(c["d"])),
     DataError, ["reset_index"]),
    # -- predict ----------------------------------------------------------------------------
    ("predict-missing-column", lambda c: c["lm"].predict(c["d"].drop(columns="x")), DataError,
     ["lacks column(s) ['x']"]),
    ("predict-new-group-level", lambda c: c["lm"].predict(c["d"].assign(g=99)), DataError,
     ["'99'", "'g'", "allow_new_levels"]),
    ("predict-new-factor-level", lambda c: c["lm"].predict(c["d"].head(3).assign(f="z")),
     DataError, ["'f'", "'z'"]),
    ("predict-new-factor-level-no-re", lambda c: c["lm"].predict(
        c["d"].head(3).assign(f="z"), include_re=False), DataError, ["'f'", "'z'"]),
    ("predict-type", lambda c: c["lm"].predict(type="prob"), ValueError, ["type", "'prob'"]),
    ("predict-newdata-list", lambda c: c["lm"].predict([1, 2]), DataError, ["DataFrame"]),
    ("predict-missing-group", lambda c: c["gm"].predict(c["d"].drop(columns="g")), DataError,
     ["['g']"]),
    ("glm-predict-missing-column", lambda c: c["gl"].predict(c["d"].drop(columns="x")),
     DataError, ["['x']"]),
    ("glm-predict-new-level", lambda c: c["gl"].predict(c["d"].head(2).assign(f="z")),
     DataError, ["'f'", "'z'"]),
    # -- simulate, bootstrap, confint ---------------------------------------------------------
    ("simulate-n-zero", lambda c: c["lm"].simulate(0), ValueError, ["n must"]),
    ("simulate-n-float", lambda c: c["lm"].simulate(2.5), ValueError, ["n must"]),
    ("simulate-seed-text", lambda c: c["lm"].simulate(1, seed="a"), ValueError, ["seed"]),
    ("simulate-weights-length", lambda c: c["gm"].simulate(1, weights=np.ones(3)), ValueError,
     ["weights", "(60)"]),
    ("simulate-newdata-weights-length", lambda c: c["gm"].simulate(
        1, newdata=c["d"].head(4), weights=np.ones(3)), ValueError, ["weights", "(4)"]),
    ("simulate-newdata-new-level", lambda c: c["lm"].simulate(1, newdata=c["d"].assign(f="z")),
     DataError, ["'f'", "'z'"]),
    ("bootstrap-n-zero", lambda c: c["lm"].bootstrap(0), ValueError, ["n must"]),
    ("bootstrap-precision", lambda c: c["lm"].bootstrap(2, precision="float16"), ValueError,
     ["precision", "float16"]),
    ("confint-method", lambda c: c["lm"].confint(method="bayes"), ValueError, ["method"]),
    ("confint-level", lambda c: c["lm"].confint(level=2), ValueError, ["level"]),
    ("confint-parm", lambda c: c["lm"].confint(method="wald", parm=["nope"]), ValueError,
     ["'nope'", "sigma"]),
    ("confint-n-boot", lambda c: c["lm"].confint(method="boot", n_boot=0), ValueError,
     ["n must"]),
    # -- anova, compare, ddf -------------------------------------------------------------------
    ("anova-one-model", lambda c: glmmjax.anova(c["lm"]), ValueError, ["two"]),
    ("anova-different-data", lambda c: glmmjax.anova(
        c["lm"], glmmjax.lmer("Reaction ~ Days + (1 | Subject)",
                              glmmjax.datasets.load("sleepstudy"))),
     ValueError, ["different data"]),
    ("anova-not-a-model", lambda c: glmmjax.anova(c["lm"], 3), TypeError, ["int"]),
    ("compare-by", lambda c: glmmjax.compare(c["lm"], c["gm"], by="R2"), ValueError,
     ["'R2'", "AIC"]),
    ("lmer-anova-ddf", lambda c: c["lm"].anova(ddf="bogus"), ValueError, ["ddf", "'bogus'"]),
    ("coef-table-ddf", lambda c: c["lm"].coef_table(ddf="bogus"), ValueError, ["ddf"]),
    # -- fit_many, fit_datasets ---------------------------------------------------------------
    ("fit-many-rows", lambda c: glmmjax.fit_many("y ~ x + (1 | g)", c["d"], np.ones((3, 2))),
     DataError, ["one row per row of data (60)"]),
    ("fit-many-text", lambda c: glmmjax.fit_many("y ~ x + (1 | g)", c["d"], "nope"), DataError,
     ["responses"]),
    ("fit-many-3d", lambda c: glmmjax.fit_many("y ~ x + (1 | g)", c["d"], np.ones((N, 2, 2))),
     DataError, ["responses", "(60, 2, 2)"]),
    ("fit-many-missing-response-column", lambda c: glmmjax.fit_many(
        "y ~ x + (1 | g)", c["d"], ["y", "nope"]), DataError, ["['nope']"]),
    ("fit-many-precision", lambda c: glmmjax.fit_many("y ~ x + (1 | g)", c["d"], np.ones((N, 2)),
                                                      precision="half"), ValueError,
     ["precision"]),
    ("fit-many-chunk-size", lambda c: glmmjax.fit_many(
        "y ~ x + (1 | g)", c["d"], np.ones((N, 2)), chunk_size=0), ValueError, ["chunk_size"]),
    ("fit-many-family", lambda c: glmmjax.fit_many("y ~ x + (1 | g)", c["d"], np.ones((N, 2)),
                                                   family="poison"), ValueError, ["'poison'"]),
    ("fit-many-no-random", lambda c: glmmjax.fit_many("y ~ x", c["d"], np.ones((N, 2))),
     FormulaError, ["random-effects"]),
    ("fit-many-duplicated-index", lambda c: glmmjax.fit_many(
        "y ~ x + (1 | g)", _dup_index(c["d"]), np.ones((N, 2))), DataError, ["reset_index"]),
    ("fit-datasets-empty", lambda c: glmmjax.fit_datasets("y ~ x + (1 | g)", []), DataError,
     ["empty"]),
    ("fit-datasets-not-frames", lambda c: glmmjax.fit_datasets("y ~ x + (1 | g)", [1, 2]),
     DataError, ["dataset 0", "DataFrame"]),
    ("fit-datasets-missing-column", lambda c: glmmjax.fit_datasets(
        "y ~ x + (1 | g)", [c["d"], c["d"].drop(columns="x")]), DataError,
     ["dataset 1", "['x']"]),
    ("fit-datasets-weights", lambda c: glmmjax.fit_datasets(
        "y ~ x + (1 | g)", [c["d"], c["d"]], weights=[None]), DataError,
     ["weights", "one entry", "(2)"]),
    ("fit-datasets-duplicated-index", lambda c: glmmjax.fit_datasets(
        "y ~ x + (1 | g)", [c["d"], _dup_index(c["d"])]), DataError,
     ["dataset 1", "reset_index"]),
    # -- MixedModel, datasets, formulas ---------------------------------------------------------
    ("mixed-model-no-random", lambda c: glmmjax.MixedModel.from_formula("y ~ x", c["d"]),
     FormulaError, ["random-effects"]),
    ("mixed-model-family", lambda c: glmmjax.MixedModel.from_formula(
        "y ~ x + (1 | g)", c["d"], family="poison"), ValueError, ["'poison'"]),
    ("mixed-model-missing-column", lambda c: glmmjax.MixedModel.from_formula(
        "y ~ zz + (1 | g)", c["d"]), DataError, ["['zz']"]),
    ("datasets-unknown", lambda c: glmmjax.datasets.load("sleepstudies"), ValueError,
     ["'sleepstudies'", "sleepstudy"]),
    ("datasets-not-text", lambda c: glmmjax.datasets.load(3), ValueError, ["string"]),
    ("datasets-path", lambda c: glmmjax.datasets.load("../pyproject"), ValueError,
     ["unknown dataset"]),
    ("formula-empty", lambda c: glmmjax.parse_formula(""), FormulaError, ["response ~ terms"]),
    ("formula-two-tildes", lambda c: glmmjax.parse_formula("y ~ x ~ z"), FormulaError,
     ["response ~ terms"]),
    ("formula-empty-term", lambda c: glmmjax.parse_formula("y ~ x + ( | g)"), FormulaError,
     ["expr | group"]),
    # -- command line ------------------------------------------------------------------------
    ("cli-missing-file", *_cli_error(["fit", "y ~ x", "--data", "/no/such.csv"],
                                     "no such file")),
    ("cli-bad-formula", *_cli_error(["fit", "y ~ (x", "--data", "{csv}"], "parenthes")),
    ("cli-unknown-column", *_cli_error(["fit", "y ~ zz", "--data", "{csv}"], "'zz'")),
    ("cli-family", *_cli_error(["fit", "y ~ x", "--data", "{csv}", "--family", "poison"],
                               "'poison'")),
    ("cli-reml-glm", *_cli_error(["fit", "y ~ x", "--data", "{csv}", "--reml"], "--reml")),
    ("cli-agq-lmer", *_cli_error(["fit", "y ~ x + (1 | g)", "--data", "{csv}", "--n-agq", "5"],
                                 "--n-agq")),
    ("cli-max-iter", *_cli_error(["fit", "y ~ x + (1 | g)", "--data", "{csv}", "--max-iter",
                                  "0"], "max_iter")),
    ("cli-constant", *_cli_error(["fit", "t ~ x + (1 | g)", "--data", "{csv}"], "constant")),
]

BAYES_ERRORS = [
    ("bayes-no-data", lambda b, c: b.fit("y ~ x + (1 | g)"), ValueError, ["data="]),
    ("bayes-family-with-model", lambda b, c: b.fit(
        glmmjax.MixedModel.from_formula("y ~ x + (1 | g)", c["d"]), family="poisson"),
     ValueError, ["family"]),
    ("bayes-prior-name", lambda b, c: b.build("y ~ x + (1 | g)", c["d"], priors={"nope": 1}),
     ValueError, ["['nope']", "b_x"]),
    ("bayes-chains", lambda b, c: b.fit("y ~ x + (1 | g)", c["d"], num_chains=0), ValueError,
     ["num_chains"]),
    ("bayes-samples", lambda b, c: b.fit("y ~ x + (1 | g)", c["d"], num_samples=-1),
     ValueError, ["num_samples"]),
    ("bayes-target-accept", lambda b, c: b.fit("y ~ x + (1 | g)", c["d"], target_accept=1.5),
     ValueError, ["target_accept"]),
    ("bayes-tree-depth", lambda b, c: b.fit("y ~ x + (1 | g)", c["d"], max_tree_depth=0),
     ValueError, ["max_tree_depth"]),
    ("bayes-chain-method", lambda b, c: b.fit("y ~ x + (1 | g)", c["d"], chain_method="threads"),
     ValueError, ["chain_method"]),
    ("bayes-precision", lambda b, c: b.fit("y ~ x + (1 | g)", c["d"], precision="half"),
     ValueError, ["precision"]),
    ("bayes-ar1-column", lambda b, c: b.build("y ~ x + (1 | g)", c["d"], ar1="nope"),
     DataError, ["'nope'"]),
    ("bayes-not-a-model", lambda b, c: b.fit(3), TypeError, ["MixedModel"]),
    ("bayes-poisson-negative", lambda b, c: b.build("y ~ x + (1 | g)", c["d"], "poisson"),
     DataError, ["Poisson"]),
]


def test_catalogue_is_large():
    assert len(ERRORS) + len(BAYES_ERRORS) >= 80
    assert len({case[0] for case in ERRORS + BAYES_ERRORS}) == len(ERRORS) + len(BAYES_ERRORS)


@contextlib.contextmanager
def _no_compilation(caplog):
    """Fails if JAX compiles anything inside: input errors come before any tracing."""
    caplog.clear()
    with caplog.at_level(logging.WARNING), jax.log_compiles(True):
        yield
    compiled = [r.getMessage()[:120] for r in caplog.records if "ompil" in r.getMessage()]
    assert not compiled, compiled


def _check(call, error, needles):
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for needle in needles:
        assert needle in message, (needle, message)
    # One line, cause first: no formula-library dumps.
    assert "\n" not in message.strip(), message
    assert "ModelSpec(" not in message and len(message) < 600, message


@pytest.mark.parametrize("case", ERRORS, ids=[c[0] for c in ERRORS])
def test_input_errors(case, ctx, caplog):
    _, call, error, needles = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. a singular fit of the model compared against
        with _no_compilation(caplog):
            _check(lambda: call(ctx), error, needles)


@pytest.mark.parametrize("case", BAYES_ERRORS, ids=[c[0] for c in BAYES_ERRORS])
def test_bayes_input_errors(case, ctx):
    # Not under _no_compilation: building the default priors (NumPyro distributions)
    # runs a few eager JAX operations before the user's priors are checked; the model
    # itself is never traced.
    bayes = pytest.importorskip("glmmjax.bayes")
    _, call, error, needles = case
    _check(lambda: call(bayes, ctx), error, needles)


# -- inputs that fit, with a warning and an explicit status ---------------------------------


def _separated_frame():
    rng = np.random.default_rng(1)
    x = rng.normal(size=120)
    return pd.DataFrame(dict(y=(x > 0).astype(float), x=x, g=np.repeat(np.arange(12), 10)))


def _check_separated(fit, names):
    assert not fit.converged
    assert fit.separated == tuple(names)
    assert "separation" in fit.convergence.message
    assert "NOT CONVERGED" in fit.summary()


def test_glmer_separation_host():
    """y = (x > 0): β_x is infinite. The fit used to report 'converged after 0
    iterations' with β_x ≈ 3264 and SE 2.8e5."""
    with pytest.warns(SeparationWarning, match=r"\['x'\]"):
        fit = glmmjax.glmer("y ~ x + (1 | g)", _separated_frame(), engine="host")
    _check_separated(fit, ["x"])


@pytest.mark.slow
def test_glmer_separation_jax():
    with pytest.warns(SeparationWarning, match=r"\['x'\]"):
        fit = glmmjax.glmer("y ~ x + (1 | g)", _separated_frame(), engine="jax")
    _check_separated(fit, ["x"])


def test_glmer_zero_count_level_is_separation():
    """A factor level whose counts are all zero: its coefficient is −∞."""
    d = _frame()
    d["c"] = np.where(d["f"] == "c", 0, d["c"] + 1)
    with pytest.warns(SeparationWarning, match=r"f\[T.c\]"):
        fit = glmmjax.glmer("c ~ x + f + (1 | g)", d, family="poisson")
    _check_separated(fit, ["f[T.c]"])


@pytest.mark.parametrize("family, column", [("poisson", "c"), ("binomial", "b")])
def test_glm_constant_response_warns_separation(family, column):
    with pytest.warns(SeparationWarning, match="Intercept"):
        fit = glmmjax.glm(f"{column} ~ x", _frame().assign(**{column: 0}), family=family)
    assert fit.separated == ("Intercept",)


def test_lmer_iteration_cap_is_loud():
    d = glmmjax.datasets.load("sleepstudy")
    with pytest.warns(ConvergenceWarning, match=r"maximum number of iterations.*gradient"):
        fit = glmmjax.lmer("Reaction ~ Days + (Days | Subject)", d, max_iter=2)
    assert not fit.converged
    text = fit.summary()
    assert "NOT CONVERGED" in text and "REML criterion (not converged)" in text
    assert "at convergence" not in text
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        full = glmmjax.lmer("Reaction ~ Days + (Days | Subject)", d)
    assert full.converged and "REML criterion at convergence" in full.summary()


@pytest.mark.slow
def test_lmer_iteration_cap_jax_engine():
    d = glmmjax.datasets.load("sleepstudy")
    with pytest.warns(ConvergenceWarning, match="maximum number of iterations"):
        fit = glmmjax.lmer("Reaction ~ Days + (Days | Subject)", d, max_iter=2, engine="jax")
    assert not fit.converged and fit.convergence.iterations == 2


def test_glmer_iteration_cap_is_loud():
    d = _frame()
    with pytest.warns(ConvergenceWarning, match=r"glmer did not converge.*gradient"):
        fit = glmmjax.glmer("c ~ x + (1 | g)", d, family="poisson", max_iter=1)
    assert not fit.converged and "NOT CONVERGED" in fit.summary()


def test_convergence_warning_is_public():
    assert issubclass(glmmjax.GLMConvergenceWarning, glmmjax.ConvergenceWarning)
    assert "ConvergenceWarning" in glmmjax.__all__


def test_cli_reports_non_convergence(ctx):
    code, err = _cli(["fit", "y ~ x + (1 | g)", "--data", _csv(ctx["d"]), "--max-iter", "1",
                      "--json"])
    assert code == 0
    assert "glmmjax: warning: lmer did not converge" in err


# -- binomial counts that are not whole numbers ---------------------------------------------

_CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"


def _cbpp_with(value):
    d = glmmjax.datasets.load("cbpp")
    d["incidence"] = d["incidence"].astype(float)
    d.loc[d.index[1], "incidence"] = value  # 3 in the data
    return d


def test_glmer_non_integer_successes_are_not_rounded():
    """A count of 3.01 must move the estimates (it used to be rounded to 3), and
    smoothly: the change from 3 to 3.02 is twice that from 3 to 3.01."""
    base = glmmjax.glmer(_CBPP, _cbpp_with(3.0)).fixef.to_numpy()
    fits = []
    for value in (3.01, 3.02):
        with pytest.warns(UserWarning, match=r"non-integer #successes in a binomial glm!"):
            fits.append(glmmjax.glmer(_CBPP, _cbpp_with(value)).fixef.to_numpy())
    step1, step2 = fits[0] - base, fits[1] - base
    assert np.max(np.abs(step1)) > 1e-5
    np.testing.assert_allclose(step2, 2 * step1, rtol=0.05, atol=1e-7)


@pytest.mark.slow
def test_glmer_non_integer_successes_engines_agree():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        host = glmmjax.glmer(_CBPP, _cbpp_with(3.01), engine="host")
        compiled = glmmjax.glmer(_CBPP, _cbpp_with(3.01), engine="jax")
    np.testing.assert_allclose(host.fixef, compiled.fixef, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(host.loglik, compiled.loglik, rtol=1e-8)


def test_glm_non_integer_successes_match_statsmodels():
    sm = pytest.importorskip("statsmodels.api")
    d = _cbpp_with(3.01)
    with pytest.warns(UserWarning, match="non-integer #successes"):
        fit = glmmjax.glm("cbind(incidence, size - incidence) ~ period", d, family="binomial")
    X = pd.get_dummies(d["period"], drop_first=True, dtype=float)
    X.insert(0, "Intercept", 1.0)
    endog = np.column_stack([d["incidence"], d["size"] - d["incidence"]])
    ref = sm.GLM(endog, X.to_numpy(), family=sm.families.Binomial()).fit(tol=1e-12)
    np.testing.assert_allclose(fit.coef.to_numpy(), ref.params, rtol=1e-7)
    np.testing.assert_allclose(fit.loglik, ref.llf, rtol=1e-9)


# -- a user-defined family ----------------------------------------------------------------------


class _PlainPoisson(Family):
    """Poisson written as a user would: no initialize, no overrides."""

    name = "plain_poisson"
    canonical_link = "log"

    def variance(self, mu, dispersion=None):
        return mu

    def loglik(self, y, mu, weights, dispersion=None):
        from jax.scipy.special import gammaln, xlogy

        return weights * (xlogy(y, mu) - mu - gammaln(y + 1.0))

    def unit_deviance(self, y, mu, dispersion=None):
        from jax.scipy.special import xlogy

        return 2.0 * (xlogy(y, y) - xlogy(y, mu) - (y - mu))


def test_user_family_default_start_is_safe():
    """μ = y started log(0) = −∞ at zero counts: glm returned NaN."""
    d = _frame()
    assert (d["c"] == 0).any()
    start = np.asarray(_PlainPoisson().initialize(d["c"].to_numpy(float), np.ones(N)))
    assert np.all(start > 0)
    mine = glmmjax.glm("c ~ x", d, family=_PlainPoisson())
    builtin = glmmjax.glm("c ~ x", d, family="poisson")
    np.testing.assert_allclose(mine.coef, builtin.coef, rtol=1e-8)
    # Where y is a valid mean the start is y itself (R's mustart for most families).
    np.testing.assert_array_equal(
        np.asarray(Family.initialize(NegativeBinomial(theta=2.0), np.array([1.0, 3.0]),
                                     np.ones(2))), [1.0, 3.0])


# -- predictions with missing values ----------------------------------------------------------


def test_predict_missing_predictor_gives_nan_row(ctx):
    new = ctx["d"].head(4).copy()
    full = ctx["lm"].predict(new).to_numpy()
    new.loc[new.index[1], "x"] = np.nan
    new.loc[new.index[2], "f"] = None
    got = ctx["lm"].predict(new).to_numpy()
    assert np.isnan(got[1]) and np.isnan(got[2])
    np.testing.assert_allclose(got[[0, 3]], full[[0, 3]])


def test_population_prediction_needs_no_grouping_column(ctx):
    d = ctx["d"].head(5)
    np.testing.assert_allclose(ctx["lm"].predict(d.drop(columns="g"), include_re=False),
                               ctx["lm"].predict(d, include_re=False))


# -- packaging -------------------------------------------------------------------------------------


def test_bayes_extra_installs_arviz():
    tomllib = pytest.importorskip("tomllib")
    root = pathlib.Path(__file__).resolve().parents[1]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert any(req.startswith("arviz") for req in extras["bayes"])
    assert any(req.startswith("numpyro") for req in extras["bayes"])


def test_many_bad_rows_are_listed_without_a_quoted_ellipsis():
    data = pd.DataFrame({"y": [-1.0] * 8, "x": np.arange(8.0)})
    with pytest.raises(glmmjax.DataError) as err:
        glmmjax.glm("y ~ x", data, family="poisson")
    assert "rows [0, 1, 2, 3, 4, ...]" in str(err.value) and "'...'" not in str(err.value)
