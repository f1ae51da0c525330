# glm_tmb_host.R -- glmmTMB GLM references (no random effects) for glmmTMB's families that
# glmmjax.glm fits on the host engine and that glmm_families_tmb2.json / glmm_tmb20.json
# have no GLM of: truncated_nbinom2, truncated_nbinom1, genpois, t_family (df fixed and
# df estimated), tweedie (power estimated) and ordbeta (cutpoints estimated).
#
# Produces: glm_tmb_host.json and data/t_glm.csv (next to this script); reads the CSVs of data/ written by
#           glmm_families_tmb2.R and glmm_tmb20.R, and glmmTMB's Owls, lme4's sleepstudy.
# Run:      cd tests/reference && Rscript glm_tmb_host.R     (seconds)
#
# Per model: name, formula, family (glmmjax's name), link, df (t_family with df fixed),
# dataset (bundled with glmmjax) or data (CSV path), and "glmmTMB": fixef, fixef_se,
# minus2loglik, dispersion = exp(betad) (glmmTMB's C++ scale: phi, theta or sigma),
# dispersion_se (delta method from betad's SE), psi and psi_se (the shapes' parameters
# on glmmTMB's scale: Student-t log df, Tweedie qlogis(p - 1), ordbeta cutpoints),
# family_params, nobs, df (logLik's df), pdHess, gradient_max (max |gradient| where
# glmmTMB stopped), fit_seconds (first fit of that model
# in this session).

suppressPackageStartupMessages({
  library(glmmTMB)
  library(lme4)
  library(jsonlite)
})
source("json_helpers.R")

data(Owls, package = "glmmTMB")
positive <- read.csv("data/salamanders_positive.csv", stringsAsFactors = TRUE)
positive$site <- factor(positive$site)
tweedie_data <- read.csv("data/tweedie_glmm.csv")
ordbeta_data <- read.csv("data/ordbeta_glmm.csv")
# Heavy-tailed data for the Student-t GLM with df estimated (sleepstudy without its
# subjects drives glmmTMB's df to infinity): y = 1 + 0.5 x + 2 t_4.
set.seed(20261208)
t_x <- rnorm(300)
t_data <- write_data(data.frame(y = 1 + 0.5 * t_x + 2 * rt(300, df = 4), x = t_x),
                     "t_glm.csv")$data

describe_glm <- function(name, formula, data, tmb_family, glmmjax_family, link,
                         dataset = NULL, file = NULL, df = NULL, start = NULL) {
  args <- list(formula, data = data, family = tmb_family)
  if (!is.null(df)) {
    args$start <- list(psi = log(df))
    args$map <- list(psi = factor(NA))
  }
  if (!is.null(start)) args$start <- start
  t0 <- proc.time()[["elapsed"]]
  fit <- do.call(glmmTMB, args)
  seconds <- proc.time()[["elapsed"]] - t0
  V <- as.matrix(vcov(fit, full = TRUE))
  betad <- unname(fixef(fit)$disp)
  sdr <- summary(fit$sdr, "fixed")
  psi_rows <- rownames(sdr) == "psi"
  d_rows <- rownames(sdr) == "betad"
  ll <- logLik(fit)
  out <- list(
    name = name, formula = paste(deparse(formula), collapse = " "),
    family = glmmjax_family, link = link,
    glmmTMB = list(
      fixef = arr(unname(fixef(fit)$cond)),
      fixef_se = arr(sqrt(diag(as.matrix(vcov(fit)$cond)))),
      minus2loglik = -2 * as.numeric(ll),
      dispersion = exp(betad),
      dispersion_se = if (any(d_rows)) exp(betad) * sdr[d_rows, 2] else NULL,
      psi = if (any(psi_rows) && is.null(df)) arr(sdr[psi_rows, 1]) else NULL,
      psi_se = if (any(psi_rows) && is.null(df)) arr(sdr[psi_rows, 2]) else NULL,
      family_params = as.list(family_params(fit)),
      nobs = nobs(fit),
      df = attr(ll, "df"),
      pdHess = fit$sdr$pdHess,
      gradient_max = max(abs(fit$sdr$gradient.fixed)),
      fit_seconds = seconds
    )
  )
  if (!is.null(df)) out$df <- df
  if (!is.null(dataset)) out$dataset <- dataset
  if (!is.null(file)) out$data <- file
  out
}

owls_formula <- SiblingNegotiation ~ FoodTreatment * SexParent + offset(log(BroodSize))
sal_formula <- count ~ spp + mined
glms <- list(
  describe_glm("salamanders_truncated_nbinom2_glm", sal_formula, positive, truncated_nbinom2,
               "truncated_nbinom2", "log", file = "data/salamanders_positive.csv"),
  describe_glm("salamanders_truncated_nbinom1_glm", sal_formula, positive, truncated_nbinom1,
               "truncated_nbinom1", "log", file = "data/salamanders_positive.csv"),
  describe_glm("owls_genpois_glm", owls_formula, Owls, genpois, "genpois", "log",
               dataset = "owls"),
  describe_glm("sleepstudy_t_df5_glm", Reaction ~ Days, sleepstudy, t_family, "t_family",
               "identity", dataset = "sleepstudy", df = 5),
  describe_glm("t_glm", y ~ x, t_data, t_family, "t_family", "identity",
               file = "data/t_glm.csv"),
  describe_glm("tweedie_glm", y ~ x, tweedie_data, tweedie, "tweedie", "log",
               file = "data/tweedie_glmm.csv"),
  # glmmTMB 1.1.5 starts psi at (0, 0), where the likelihood is NaN: start at (-1, 1).
  describe_glm("ordbeta_glm", y ~ x, ordbeta_data, ordbeta, "ordbeta", "logit",
               file = "data/ordbeta_glmm.csv", start = list(psi = c(-1, 1)))
)
names(glms) <- vapply(glms, function(m) m$name, "")

save_json(list(
  glms = glms,
  versions = list(R = R.version.string,
                  glmmTMB = as.character(packageVersion("glmmTMB")),
                  lme4 = as.character(packageVersion("lme4")))), "glm_tmb_host.json")
