# glmm_families_reference.R -- glmmTMB references for GLMMs of families and links other
# than binomial-logit and Poisson-log (issue 15: every family on the host engine).
#
# Produces: glmm_families.json and data/beta_glmm.csv (next to this script), and
#           ../../glmmjax/data/owls.csv (glmmTMB's Owls, bundled with glmmjax).
# Run:      cd tests/reference && Rscript glmm_families_reference.R     (under a minute)
#
# Layout: {"versions": {...}, "models": {name: {...}}}. Per model: name, dataset (bundled
# with glmmjax) or data (CSV path next to this script), formula, family (glmmjax's name),
# link, and "glmmTMB": fixef_names, fixef, fixef_se, re_sd ({group: {term: sd}}),
# minus2loglik (the full -2 log-likelihood), dispersion on glmmjax's scale (NB2 size
# theta; Gamma phi = sigma^2; beta precision phi; Gaussian sigma^2), pdHess,
# optimizer_convergence, fit_seconds (first and only fit of that model in this session).
# glmmTMB runs at its defaults (tighter nlminb tolerances end in "singular convergence"
# without moving the estimates).

suppressPackageStartupMessages({
  library(glmmTMB)
  library(lme4)
  library(mlmRev)
  library(jsonlite)
})
source("json_helpers.R")

data(Owls, package = "glmmTMB")
write.csv(Owls, "../../glmmjax/data/owls.csv", row.names = FALSE)

set.seed(20261206)
n_groups <- 20; per <- 15
g <- factor(rep(sprintf("g%02d", 1:n_groups), each = per))
x <- rnorm(n_groups * per)
b <- rnorm(n_groups, sd = 0.5)
mu <- plogis(-0.3 + 0.7 * x + b[as.integer(g)])
phi <- 12
beta_data <- data.frame(y = rbeta(length(mu), mu * phi, (1 - mu) * phi), x = x, g = g)
write.csv(beta_data, "data/beta_glmm.csv", row.names = FALSE)
gamma_data <- read.csv("data/gamma_glmm.csv", colClasses = c(g = "factor"))

describe <- function(name, formula, data, tmb_family, glmmjax_family, link,
                     dataset = NULL, file = NULL, start = NULL) {
  t0 <- proc.time()[["elapsed"]]
  fit <- if (is.null(start)) glmmTMB(formula, data = data, family = tmb_family)
         else glmmTMB(formula, data = data, family = tmb_family, start = start)
  seconds <- proc.time()[["elapsed"]] - t0
  ll <- logLik(fit)
  V <- as.matrix(vcov(fit)$cond)
  vc <- VarCorr(fit)$cond
  fam <- stats::family(fit)$family
  disp <- switch(fam,
    nbinom2 = sigma(fit),
    Gamma = sigma(fit)^2,
    beta = sigma(fit),
    gaussian = sigma(fit)^2,
    NULL)
  out <- list(
    name = name, formula = paste(deparse(formula), collapse = " "),
    family = glmmjax_family, link = link,
    glmmTMB = list(
      fixef_names = arr(names(fixef(fit)$cond)),
      fixef = arr(unname(fixef(fit)$cond)),
      fixef_se = arr(sqrt(diag(V))),
      re_sd = lapply(vc, function(m) as.list(attr(m, "stddev"))),
      minus2loglik = -2 * as.numeric(ll),
      dispersion = disp,
      nobs = nobs(fit),
      pdHess = fit$sdr$pdHess,
      optimizer_convergence = fit$fit$convergence,
      fit_seconds = seconds
    )
  )
  if (!is.null(dataset)) out$dataset <- dataset
  if (!is.null(file)) out$data <- file
  out
}

data(Contraception, package = "mlmRev")
models <- list(
  describe("owls_nb2",
           SiblingNegotiation ~ FoodTreatment * SexParent + offset(log(BroodSize)) + (1 | Nest),
           Owls, nbinom2, "negative_binomial", "log", dataset = "owls"),
  describe("gamma_log", y ~ x + (1 | g), gamma_data, Gamma(link = "log"), "gamma", "log",
           file = "data/gamma_glmm.csv"),
  describe("beta_logit", y ~ x + (1 | g), beta_data, beta_family(), "beta", "logit",
           file = "data/beta_glmm.csv"),
  describe("cbpp_probit", cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp,
           binomial(link = "probit"), "binomial", "probit", dataset = "cbpp"),
  describe("contraception_probit", use ~ age + I(age^2) + urban + livch + (1 | district),
           Contraception, binomial(link = "probit"), "binomial", "probit",
           dataset = "contraception"),
  describe("cbpp_cloglog", cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp,
           binomial(link = "cloglog"), "binomial", "cloglog", dataset = "cbpp"),
  describe("beta_probit", y ~ x + (1 | g), beta_data, beta_family(link = "probit"), "beta",
           "probit", file = "data/beta_glmm.csv"),
  describe("grouseticks_poisson_sqrt", TICKS ~ YEAR + cHEIGHT + (1 | LOCATION), grouseticks,
           poisson(link = "sqrt"), "poisson", "sqrt", dataset = "grouseticks"),
  describe("sleepstudy_gaussian_log", Reaction ~ Days + (1 | Subject), sleepstudy,
           gaussian(link = "log"), "gaussian", "log", dataset = "sleepstudy")
)
names(models) <- vapply(models, function(m) m$name, "")

# Poisson-sqrt on grouseticks: glmmTMB's default start ends at -2 log L 2953.77, a local
# optimum (mu = eta^2 is symmetric in the sign of eta, so the likelihood has several).
# Started from lme4's glmer estimates, glmmTMB reaches a far better one; that fit is the
# reference for glmmjax, and the default fit stays in the JSON to show the difference.
sqrt_formula <- TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)
sqrt_glmer <- glmer(sqrt_formula, grouseticks, family = poisson(link = "sqrt"))
restarted <- describe("grouseticks_poisson_sqrt", sqrt_formula, grouseticks,
                      poisson(link = "sqrt"), "poisson", "sqrt", dataset = "grouseticks",
                      start = list(beta = unname(fixef(sqrt_glmer)),
                                   theta = log(unname(getME(sqrt_glmer, "theta")))))
models$grouseticks_poisson_sqrt$glmmTMB_from_glmer_start <- restarted$glmmTMB
models$grouseticks_poisson_sqrt$glmer_minus2loglik <- -2 * as.numeric(logLik(sqrt_glmer))

save_json(list(
  versions = list(R = R.version.string,
                  glmmTMB = as.character(packageVersion("glmmTMB")),
                  lme4 = as.character(packageVersion("lme4"))),
  models = models), "glmm_families.json")
