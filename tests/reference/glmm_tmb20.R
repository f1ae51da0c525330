# glmm_tmb20.R -- glmmTMB references for issue 20's last items: the Conway-Maxwell-Poisson
# (compois) family, GLMM, zero-inflated GLMM and GLM; ordered beta (ordbeta); REML with a
# dispersion model ("reml"); profile-likelihood intervals of a ZIP GLMM ("profile").
#
# Produces: glmm_tmb20.json and data/{compois_under,compois_over,ordbeta_glmm}.csv
#           (next to this script).
# Run:      cd tests/reference && Rscript glmm_tmb20.R     (a few minutes: glmmTMB's
#           compois evaluates its normalizing constant by series at every row)
#
# Layout: {"versions": {...}, "models": {name: {...}}}. Per model: name, data (CSV path
# next to this script), formula, ziformula (or null), family (glmmjax's name), link,
# and "glmmTMB": fixef_names, fixef, fixef_se, zi_fixef, zi_fixef_se, re_sd
# ({group: {term: sd}}), minus2loglik, dispersion = exp(betad) and log_dispersion_se (the SE of betad) (compois phi = 1/nu,
# ordbeta phi), family_params (ordbeta's cutoffs plogis(psi)), psi (ordbeta's cutpoints
# on the logit scale), psi_se, nobs, pdHess, optimizer_convergence, fit_seconds (the
# first fit of that model in this session).

suppressPackageStartupMessages({
  library(glmmTMB)
  library(jsonlite)
})
source("json_helpers.R")

# Conway-Maxwell-Poisson draws with mean mu and nu (glmmTMB's compois: phi = 1/nu), by
# the inverse CDF over 0..500 with log(lambda) solved for the mean.
rcompois_mean <- function(mu, nu) {
  j <- 0:500
  vapply(seq_along(mu), function(i) {
    lt <- function(L) j * L - nu * lgamma(j + 1)
    gap <- function(L) {
      w <- lt(L); p <- exp(w - max(w)); sum(j * p) / sum(p) - mu[i]
    }
    L <- uniroot(gap, c(-60, 60), tol = 1e-12)$root
    w <- lt(L)
    sample(j, 1, prob = exp(w - max(w)))
  }, 0)
}

set.seed(20261208)
groups <- factor(rep(sprintf("g%02d", 1:25), each = 12))
x <- rnorm(300)
b <- rnorm(25, sd = 0.4)
mu <- exp(1 + 0.4 * x + b[as.integer(groups)])
under <- write_data(data.frame(y = rcompois_mean(mu, 2), x = x, g = groups),
                    "compois_under.csv")$data
z <- rnorm(300)
mu2 <- exp(0.8 + 0.5 * x + b[as.integer(groups)])
y2 <- rcompois_mean(mu2, 0.5)
y2[runif(300) < plogis(-1.2 + 0.8 * z)] <- 0  # structural zeros for the ZI model
over <- write_data(data.frame(y = y2, x = x, z = z, g = groups), "compois_over.csv")$data

# Ordered beta data (glmmTMB's ordbeta, cutpoints on the logit scale c0 = -2, c1 = 2):
# log-odds 0.3 + 0.8 x + b_g, precision 5.
set.seed(20261209)
ob_groups <- factor(rep(sprintf("g%02d", 1:20), each = 15))
ob_x <- rnorm(300)
ob_eta <- 0.3 + 0.8 * ob_x + rnorm(20, sd = 0.5)[as.integer(ob_groups)]
ob_mu <- plogis(ob_eta)
ob_u <- runif(300)
ob_y <- ifelse(ob_u < 1 - plogis(ob_eta + 2), 0,
               ifelse(ob_u > 1 - plogis(ob_eta - 2), 1,
                      rbeta(300, ob_mu * 5, (1 - ob_mu) * 5)))
ordbeta_data <- write_data(data.frame(y = ob_y, x = ob_x, g = ob_groups),
                           "ordbeta_glmm.csv")$data

describe <- function(name, formula, data, tmb_family, glmmjax_family, link, file,
                     ziformula = ~0, start = NULL) {
  t0 <- proc.time()[["elapsed"]]
  args <- list(formula, data = data, family = tmb_family, ziformula = ziformula)
  if (!is.null(start)) args$start <- start
  fit <- do.call(glmmTMB, args)
  seconds <- proc.time()[["elapsed"]] - t0
  V <- vcov(fit)
  has_re <- length(fit$modelInfo$reTrms$cond$flist) > 0
  out <- list(
    name = name, formula = paste(deparse(formula), collapse = " "),
    ziformula = if (identical(ziformula, ~0)) NULL else paste(deparse(ziformula), collapse = " "),
    family = glmmjax_family, link = link, data = file,
    glmmTMB = list(
      fixef_names = arr(names(fixef(fit)$cond)),
      fixef = arr(unname(fixef(fit)$cond)),
      fixef_se = arr(sqrt(diag(as.matrix(V$cond)))),
      zi_fixef = arr(unname(fixef(fit)$zi)),
      zi_fixef_se = if (is.null(V$zi)) arr(numeric(0)) else arr(sqrt(diag(as.matrix(V$zi)))),
      re_sd = if (has_re) lapply(VarCorr(fit)$cond, function(m) as.list(attr(m, "stddev"))) else NULL,
      minus2loglik = -2 * as.numeric(logLik(fit)),
      dispersion = exp(unname(fixef(fit)$disp)),
      log_dispersion_se = arr(sqrt(diag(as.matrix(
        fit$sdr$cov.fixed[names(fit$fit$par) == "betad", names(fit$fit$par) == "betad"])))),
      family_params = as.list(family_params(fit)),
      nobs = nobs(fit),
      pdHess = fit$sdr$pdHess,
      optimizer_convergence = fit$fit$convergence,
      fit_seconds = seconds
    )
  )
  psi <- fit$fit$par[names(fit$fit$par) == "psi"]
  if (length(psi)) {
    out$glmmTMB$psi <- arr(unname(psi))
    cov_psi <- fit$sdr$cov.fixed[names(fit$fit$par) == "psi", names(fit$fit$par) == "psi"]
    out$glmmTMB$psi_se <- arr(sqrt(diag(as.matrix(cov_psi))))
  }
  out
}

models <- list(
  describe("compois_under", y ~ x + (1 | g), under, compois, "compois", "log",
           "data/compois_under.csv"),
  describe("compois_over", y ~ x + (1 | g), over, compois, "compois", "log",
           "data/compois_over.csv"),
  describe("compois_zi", y ~ x + (1 | g), over, compois, "compois", "log",
           "data/compois_over.csv", ziformula = ~z),
  describe("compois_glm", y ~ x, under, compois, "compois", "log", "data/compois_under.csv"),
  # glmmTMB 1.1.5 starts psi at (0, 0), where the interior rows' probability
  # plogis(eta - psi0) - plogis(eta - psi1) is 0 and the likelihood NaN: start at (-1, 1).
  describe("ordbeta_glmm", y ~ x + (1 | g), ordbeta_data, ordbeta, "ordbeta", "logit",
           "data/ordbeta_glmm.csv", start = list(psi = c(-1, 1)))
)
names(models) <- vapply(models, function(m) m$name, "")

# REML with a dispersion model (Gaussian; glmmTMB's REML = TRUE integrates the fixed
# effects out with the random effects). Layout: fixef (cond), fixef_se, disp_fixef,
# disp_fixef_se (vcov(full = TRUE)), re_sd, minus2loglik (-2 x the REML logLik), df.
data(sleepstudy, package = "lme4")
describe_reml <- function(name, formula, dispformula) {
  t0 <- proc.time()[["elapsed"]]
  fit <- glmmTMB(formula, sleepstudy, dispformula = dispformula, REML = TRUE)
  seconds <- proc.time()[["elapsed"]] - t0
  full <- vcov(fit, full = TRUE)
  disp <- grep("^d~", colnames(full))
  vc <- VarCorr(fit)$cond
  list(name = name, formula = paste(deparse(formula), collapse = " "),
       dispformula = paste(deparse(dispformula), collapse = " "), dataset = "sleepstudy",
       glmmTMB = list(
         fixef = arr(unname(fixef(fit)$cond)),
         fixef_se = arr(sqrt(diag(as.matrix(vcov(fit)$cond)))),
         disp_fixef = arr(unname(fixef(fit)$disp)),
         disp_fixef_se = arr(sqrt(diag(full)[disp])),
         re_sd = lapply(vc, function(m) as.list(attr(m, "stddev"))),
         re_cor = lapply(vc, function(m) arr(attr(m, "correlation")[lower.tri(attr(m, "correlation"))])),
         minus2loglik = -2 * as.numeric(logLik(fit)), df = attr(logLik(fit), "df"),
         pdHess = fit$sdr$pdHess, fit_seconds = seconds))
}
reml <- list(
  describe_reml("sleepstudy_reml_disp", Reaction ~ Days + (Days | Subject), ~ Days),
  describe_reml("sleepstudy_reml_disp_intercept", Reaction ~ Days + (1 | Subject), ~ Days)
)
names(reml) <- vapply(reml, function(m) m$name, "")

# Profile-likelihood intervals (confint(method = "profile")) of a zero-inflated Poisson
# GLMM: rows as glmmTMB names them (theta_1|site.1 is log SD), level 0.95.
data(Salamanders, package = "glmmTMB")
zip_fit <- glmmTMB(count ~ mined + (1 | site), Salamanders, family = poisson,
                   ziformula = ~ mined)
t0 <- proc.time()[["elapsed"]]
zip_ci <- confint(zip_fit, method = "profile")
profile_seconds <- proc.time()[["elapsed"]] - t0
profile <- list(
  name = "salamanders_zip_profile", dataset = "salamanders",
  formula = "count ~ mined + (1 | site)", ziformula = "~ mined", family = "poisson",
  glmmTMB = list(rows = arr(rownames(zip_ci)), lower = arr(unname(zip_ci[, 1])),
                 upper = arr(unname(zip_ci[, 2])),
                 minus2loglik = -2 * as.numeric(logLik(zip_fit)),
                 profile_seconds = profile_seconds))

save_json(list(
  versions = list(R = R.version.string,
                  glmmTMB = as.character(packageVersion("glmmTMB")),
                  TMB = as.character(packageVersion("TMB"))),
  models = models, reml = reml, profile = profile), "glmm_tmb20.json")
