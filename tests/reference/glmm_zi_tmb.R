# glmm_zi_tmb.R -- glmmTMB references for zero-inflation (ziformula), hurdles (truncated
# families with ziformula) and dispersion models (dispformula) (issue 20).
#
# Produces: glmm_zi_tmb.json (next to this script).
# Run:      cd tests/reference && Rscript glmm_zi_tmb.R     (about a minute)
#
# Layout: {"versions": {...}, "models": {name: {...}}}. Per model: name, dataset (bundled
# with glmmjax) or data (CSV next to this script), formula, ziformula, dispformula,
# family (glmmjax's name), link, and "glmmTMB": for each part p in cond, zi, disp:
# fixef_<p>_names, fixef_<p>, se_<p> (sqrt(diag(vcov))); re_sd_cond, re_sd_zi
# ({group: {term: sd}}); minus2loglik (full -2 log L), aic, df, nobs, pdHess,
# optimizer_convergence, fit_seconds (the first and only fit of that model in this
# session), and the first 8 fitted values of predict(type = "response", "conditional",
# "zprob").

suppressPackageStartupMessages({
  library(glmmTMB)
  library(lme4)
  library(jsonlite)
})
source("json_helpers.R")

data(Owls, package = "glmmTMB")
data(Salamanders, package = "glmmTMB")
gamma_data <- read.csv("data/gamma_glmm.csv", colClasses = c(g = "factor"))
beta_data <- read.csv("data/beta_glmm.csv", colClasses = c(g = "factor"))
sleep <- sleepstudy
sleep$obs <- factor(seq_len(nrow(sleep)))

re_sds <- function(vc) {
  if (is.null(vc)) return(setNames(list(), character(0)))
  lapply(vc, function(m) as.list(attr(m, "stddev")))
}

describe <- function(name, formula, data, tmb_family, glmmjax_family, link,
                     ziformula = ~0, dispformula = ~1, dataset = NULL, file = NULL) {
  t0 <- proc.time()[["elapsed"]]
  fit <- glmmTMB(formula, data = data, family = tmb_family, ziformula = ziformula,
                 dispformula = dispformula)
  seconds <- proc.time()[["elapsed"]] - t0
  ll <- logLik(fit)
  Vfull <- vcov(fit, full = TRUE)
  fe <- fixef(fit)
  part <- function(p) {
    est <- fe[[p]]
    # vcov()'s per-part list leaves out a dispersion part of one coefficient; the full
    # matrix names it "d~(Intercept)".
    prefix <- c(cond = "", zi = "zi~", disp = "d~")[[p]]
    se <- if (length(est)) sqrt(diag(Vfull)[paste0(prefix, names(est))]) else numeric(0)
    list(names = arr(as.character(names(est))), est = arr(as.numeric(est)),
         se = arr(as.numeric(se)))
  }
  vc <- VarCorr(fit)
  parts <- lapply(c(cond = "cond", zi = "zi", disp = "disp"), part)
  out <- list(
    name = name, formula = paste(deparse(formula), collapse = " "),
    ziformula = paste(deparse(ziformula), collapse = " "),
    dispformula = paste(deparse(dispformula), collapse = " "),
    family = glmmjax_family, link = link,
    glmmTMB = list(
      fixef_cond_names = parts$cond$names, fixef_cond = parts$cond$est, se_cond = parts$cond$se,
      fixef_zi_names = parts$zi$names, fixef_zi = parts$zi$est, se_zi = parts$zi$se,
      fixef_disp_names = parts$disp$names, fixef_disp = parts$disp$est,
      se_disp = parts$disp$se,
      re_sd_cond = re_sds(vc$cond), re_sd_zi = re_sds(vc$zi),
      minus2loglik = -2 * as.numeric(ll), aic = AIC(fit), df = attr(ll, "df"),
      nobs = nobs(fit), pdHess = fit$sdr$pdHess,
      optimizer_convergence = fit$fit$convergence, fit_seconds = seconds,
      predict_response = arr(unname(predict(fit, type = "response"))[1:8]),
      predict_conditional = arr(unname(predict(fit, type = "conditional"))[1:8]),
      predict_zprob = arr(unname(predict(fit, type = "zprob"))[1:8])
    )
  )
  if (!is.null(dataset)) out$dataset <- dataset
  if (!is.null(file)) out$data <- file
  out
}

owls_formula <- SiblingNegotiation ~ FoodTreatment * SexParent + offset(log(BroodSize)) +
  (1 | Nest)
models <- list(
  describe("owls_zip", owls_formula, Owls, poisson, "poisson", "log", ziformula = ~1,
           dataset = "owls"),
  describe("owls_zinb2_zi_food", owls_formula, Owls, nbinom2, "negative_binomial", "log",
           ziformula = ~FoodTreatment, dataset = "owls"),
  describe("salamanders_zip", count ~ mined + (1 | site), Salamanders, poisson, "poisson",
           "log", ziformula = ~mined, dataset = "salamanders"),
  describe("salamanders_zinb2", count ~ mined + (1 | site), Salamanders, nbinom2,
           "negative_binomial", "log", ziformula = ~mined, dataset = "salamanders"),
  describe("salamanders_zip_zi_re", count ~ mined + (1 | site), Salamanders, poisson,
           "poisson", "log", ziformula = ~mined + (1 | site), dataset = "salamanders"),
  describe("salamanders_zinb2_zi_re", count ~ mined + (1 | site), Salamanders, nbinom2,
           "negative_binomial", "log", ziformula = ~mined + (1 | site),
           dataset = "salamanders"),
  describe("salamanders_hurdle_poisson", count ~ mined + (1 | site), Salamanders,
           truncated_poisson, "truncated_poisson", "log", ziformula = ~mined,
           dataset = "salamanders"),
  describe("salamanders_hurdle_nb2", count ~ mined + (1 | site), Salamanders,
           truncated_nbinom2, "truncated_nbinom2", "log", ziformula = ~mined,
           dataset = "salamanders"),
  describe("sleepstudy_gaussian_disp", Reaction ~ Days + (1 | Subject), sleepstudy,
           gaussian, "gaussian", "identity", dispformula = ~Days, dataset = "sleepstudy"),
  describe("sleepstudy_gaussian_disp0", Reaction ~ Days + (1 | Subject) + (1 | obs), sleep,
           gaussian, "gaussian", "identity", dispformula = ~0, dataset = "sleepstudy"),
  describe("owls_nb2_disp", owls_formula, Owls, nbinom2, "negative_binomial", "log",
           dispformula = ~FoodTreatment, dataset = "owls"),
  describe("salamanders_zinb2_disp", count ~ mined + (1 | site), Salamanders, nbinom2,
           "negative_binomial", "log", ziformula = ~mined, dispformula = ~mined,
           dataset = "salamanders"),
  describe("gamma_log_disp", y ~ x + (1 | g), gamma_data, Gamma(link = "log"), "gamma", "log",
           dispformula = ~x, file = "data/gamma_glmm.csv"),
  describe("beta_logit_disp", y ~ x + (1 | g), beta_data, beta_family(), "beta", "logit",
           dispformula = ~x, file = "data/beta_glmm.csv"),
  describe("cbpp_zi_betabinomial", cbind(incidence, size - incidence) ~ period + (1 | herd),
           cbpp, betabinomial, "betabinomial", "logit", ziformula = ~1, dataset = "cbpp")
)
names(models) <- vapply(models, function(m) m$name, "")

save_json(list(
  versions = list(R = R.version.string,
                  glmmTMB = as.character(packageVersion("glmmTMB")),
                  lme4 = as.character(packageVersion("lme4"))),
  models = models), "glmm_zi_tmb.json")
