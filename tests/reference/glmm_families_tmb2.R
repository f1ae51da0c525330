# glmm_families_tmb2.R -- glmmTMB references for glmmTMB's own families (issue 20, item 4):
# nbinom1, truncated_poisson, truncated_nbinom2, truncated_nbinom1, genpois, betabinomial,
# lognormal, t_family (df fixed, and df estimated as glmmTMB's default) and tweedie (power
# estimated).
#
# Produces: glmm_families_tmb2.json and data/{salamanders_positive,lognormal_glmm,
#           tweedie_glmm}.csv
#           (next to this script).
# Run:      cd tests/reference && Rscript glmm_families_tmb2.R     (under a minute)
#
# Layout as glmm_families.json: {"versions": {...}, "models": {name: {...}}}. Per model:
# name, dataset (bundled with glmmjax) or data (CSV path next to this script), formula,
# family (glmmjax's name), link, df (t_family only), and "glmmTMB": fixef_names, fixef,
# fixef_se, re_sd ({group: {term: sd}}), minus2loglik, dispersion = exp(betad), the
# family's parameter on glmmTMB's C++ scale (nbinom1/genpois/betabinomial phi,
# truncated_nbinom2 theta, lognormal and t_family sigma), family_params (glmmTMB's
# family_params(): Student-t df, estimated in sleepstudy_t; Tweedie power), pdHess,
# optimizer_convergence,
# fit_seconds (the first fit of that model in this session, nothing compiled before).

suppressPackageStartupMessages({
  library(glmmTMB)
  library(lme4)
  library(jsonlite)
})
source("json_helpers.R")

data(Owls, package = "glmmTMB")
data(Salamanders, package = "glmmTMB")
positive <- write_data(droplevels(subset(Salamanders, count > 0))[, c("site", "mined", "spp", "count")],
                       "salamanders_positive.csv")$data

set.seed(20261206)
n_groups <- 25; per <- 12
g <- factor(rep(sprintf("g%02d", 1:n_groups), each = per))
x <- rnorm(n_groups * per)
b <- rnorm(n_groups, sd = 0.4)
mu <- exp(1 + 0.5 * x + b[as.integer(g)])
sigma <- 0.8 * mean(mu)
log_var <- log1p((sigma / mu)^2)
lognormal_data <- write_data(
  data.frame(y = exp(rnorm(length(mu), log(mu) - log_var / 2, sqrt(log_var))), x = x, g = g),
  "lognormal_glmm.csv")$data

# Tweedie (compound Poisson-gamma) data: p = 1.6, phi = 1.2, log mu = 0.3 + 0.5 x + b_g.
set.seed(20261207)
tw_groups <- factor(rep(sprintf("g%02d", 1:20), each = 15))
tw_x <- rnorm(300)
tw_mu <- exp(0.3 + 0.5 * tw_x + rnorm(20, sd = 0.4)[as.integer(tw_groups)])
tw_p <- 1.6; tw_phi <- 1.2
tw_count <- rpois(300, tw_mu^(2 - tw_p) / (tw_phi * (2 - tw_p)))
tw_y <- ifelse(tw_count > 0,
               rgamma(300, shape = pmax(tw_count, 1) * (2 - tw_p) / (tw_p - 1),
                      scale = tw_phi * (tw_p - 1) * tw_mu^(tw_p - 1)), 0)
tweedie_data <- write_data(data.frame(y = tw_y, x = tw_x, g = tw_groups),
                           "tweedie_glmm.csv")$data

describe <- function(name, formula, data, tmb_family, glmmjax_family, link,
                     dataset = NULL, file = NULL, df = NULL) {
  extra <- list()
  if (!is.null(df)) extra <- list(start = list(psi = log(df)), map = list(psi = factor(NA)))
  t0 <- proc.time()[["elapsed"]]
  fit <- do.call(glmmTMB, c(list(formula, data = data, family = tmb_family), extra))
  seconds <- proc.time()[["elapsed"]] - t0
  ll <- logLik(fit)
  V <- as.matrix(vcov(fit)$cond)
  vc <- VarCorr(fit)$cond
  out <- list(
    name = name, formula = paste(deparse(formula), collapse = " "),
    family = glmmjax_family, link = link,
    glmmTMB = list(
      fixef_names = arr(names(fixef(fit)$cond)),
      fixef = arr(unname(fixef(fit)$cond)),
      fixef_se = arr(sqrt(diag(V))),
      re_sd = lapply(vc, function(m) as.list(attr(m, "stddev"))),
      minus2loglik = -2 * as.numeric(ll),
      dispersion = exp(unname(fixef(fit)$disp)),
      family_params = as.list(family_params(fit)),
      nobs = nobs(fit),
      pdHess = fit$sdr$pdHess,
      optimizer_convergence = fit$fit$convergence,
      fit_seconds = seconds
    )
  )
  if (!is.null(df)) out$df <- df
  if (!is.null(dataset)) out$dataset <- dataset
  if (!is.null(file)) out$data <- file
  out
}

cbpp_formula <- cbind(incidence, size - incidence) ~ period + (1 | herd)
owls_formula <- SiblingNegotiation ~ FoodTreatment * SexParent + offset(log(BroodSize)) + (1 | Nest)
sal_formula <- count ~ spp + mined + (1 | site)
models <- list(
  describe("owls_nbinom1", owls_formula, Owls, nbinom1, "nbinom1", "log", dataset = "owls"),
  describe("salamanders_nbinom1", sal_formula, Salamanders, nbinom1, "nbinom1", "log",
           dataset = "salamanders"),
  describe("salamanders_truncated_poisson", sal_formula, positive, truncated_poisson,
           "truncated_poisson", "log", file = "data/salamanders_positive.csv"),
  describe("salamanders_truncated_nbinom2", sal_formula, positive, truncated_nbinom2,
           "truncated_nbinom2", "log", file = "data/salamanders_positive.csv"),
  describe("salamanders_truncated_nbinom1", sal_formula, positive, truncated_nbinom1,
           "truncated_nbinom1", "log", file = "data/salamanders_positive.csv"),
  describe("owls_genpois", owls_formula, Owls, genpois, "genpois", "log", dataset = "owls"),
  describe("cbpp_betabinomial", cbpp_formula, cbpp, betabinomial, "betabinomial", "logit",
           dataset = "cbpp"),
  describe("sleepstudy_t_df5", Reaction ~ Days + (Days | Subject), sleepstudy, t_family,
           "t_family", "identity", dataset = "sleepstudy", df = 5),
  describe("sleepstudy_t", Reaction ~ Days + (Days | Subject), sleepstudy, t_family,
           "t_family", "identity", dataset = "sleepstudy"),
  describe("tweedie_log", y ~ x + (1 | g), tweedie_data, tweedie, "tweedie", "log",
           file = "data/tweedie_glmm.csv")
)
names(models) <- vapply(models, function(m) m$name, "")

# glmmTMB 1.1.5 has no lognormal family (it came later, with mean and SD on the data
# scale, the parameterization glmmjax follows). Its reference is the GLM y ~ x by
# maximum likelihood with R's dlnorm and optim (BFGS, then Newton polish by nlm).
lognormal_nll <- function(par, data) {
  mu <- exp(par[1] + par[2] * data$x)
  sigma <- exp(par[3])
  log_var <- log1p((sigma / mu)^2)
  -sum(dlnorm(data$y, log(mu) - log_var / 2, sqrt(log_var), log = TRUE))
}
start <- c(coef(lm(log(y) ~ x, lognormal_data)), log(sd(lognormal_data$y)))
opt <- optim(start, lognormal_nll, data = lognormal_data, method = "BFGS",
             control = list(reltol = 1e-14, maxit = 1000))
opt <- nlm(lognormal_nll, opt$par, data = lognormal_data, hessian = TRUE, gradtol = 1e-12)
cov <- solve(opt$hessian)
lognormal_glm <- list(
  name = "lognormal_glm", formula = "y ~ x", family = "lognormal", link = "log",
  data = "data/lognormal_glmm.csv",
  optim = list(fixef_names = arr(c("(Intercept)", "x")), fixef = arr(opt$estimate[1:2]),
               fixef_se = arr(sqrt(diag(cov))[1:2]), minus2loglik = 2 * opt$minimum,
               dispersion = exp(opt$estimate[3]), gradient = arr(opt$gradient)))

# GLMs (no random effects) through glmmTMB, for glmmjax.glm.
describe_glm <- function(name, formula, data, tmb_family, glmmjax_family, link,
                         dataset = NULL, file = NULL) {
  fit <- glmmTMB(formula, data = data, family = tmb_family)
  out <- list(name = name, formula = paste(deparse(formula), collapse = " "),
              family = glmmjax_family, link = link,
              glmmTMB = list(fixef = arr(unname(fixef(fit)$cond)),
                             fixef_se = arr(sqrt(diag(as.matrix(vcov(fit)$cond)))),
                             minus2loglik = -2 * as.numeric(logLik(fit)),
                             dispersion = exp(unname(fixef(fit)$disp))))
  if (!is.null(dataset)) out$dataset <- dataset
  if (!is.null(file)) out$data <- file
  out
}
glms <- list(
  describe_glm("salamanders_truncated_poisson_glm", count ~ spp + mined, positive,
               truncated_poisson, "truncated_poisson", "log",
               file = "data/salamanders_positive.csv"),
  describe_glm("salamanders_nbinom1_glm", count ~ spp + mined, Salamanders, nbinom1,
               "nbinom1", "log", dataset = "salamanders"),
  describe_glm("cbpp_betabinomial_glm", cbind(incidence, size - incidence) ~ period, cbpp,
               betabinomial, "betabinomial", "logit", dataset = "cbpp")
)
names(glms) <- vapply(glms, function(m) m$name, "")

save_json(list(
  glms = glms,
  lognormal_glm = lognormal_glm,
  versions = list(R = R.version.string,
                  glmmTMB = as.character(packageVersion("glmmTMB")),
                  lme4 = as.character(packageVersion("lme4"))),
  models = models), "glmm_families_tmb2.json")
