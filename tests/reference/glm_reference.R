# glm_reference.R -- reference values for generalized linear models.
#
# Produces: glm.json and the simulated data sets data/glm_*.csv (next to this script).
# Run:      cd tests/reference && Rscript glm_reference.R
#
# Engines: stats::glm (binomial logit/probit/cloglog, poisson with offset, Gamma
# log/inverse, inverse.gaussian 1/mu^2 and log, gaussian), MASS::glm.nb (NB2) and
# glmmTMB (beta regression).
#
# Layout: {"versions": {...}, "models": {name: {...}}}.  Per model: name, engine,
# formula, family, link, dataset (name of a data set bundled with glmmjax, or null),
# data (path of the CSV relative to this folder for simulated data, or null),
# weights (column name or null), coef_names, coef, se, stat (z or t value), p, vcov,
# loglik, df (attr(logLik, "df")), aic, bic, deviance, null_deviance, df_residual,
# dispersion (summary(fit)$dispersion), nobs, fitted_head (first 10, response scale)
# and engine-specific extras (theta/theta_se for NB2, phi for beta).
#
# Notes on R's conventions that a port must copy:
#  * For gaussian, Gamma and inverse.gaussian, logLik/AIC use the ML dispersion
#    estimate deviance/n (not the Pearson estimate reported as "dispersion"), and
#    df counts the dispersion as one extra parameter.
#  * For binomial with a proportion response, weights = size are the binomial
#    totals, and the log-likelihood includes the log binomial coefficients.
#  * A two-level factor response (use: N/Y) counts the second level (Y) as success.
#  * The CSV files are written with 17 significant digits and the fits here use the
#    data as read back from those files, so Python sees exactly the same numbers.

suppressPackageStartupMessages({
  library(lme4)      # cbpp, sleepstudy
  library(MASS)      # glm.nb
  library(glmmTMB)   # Salamanders, beta_family
  library(mlmRev)    # Contraception
  library(jsonlite)
})

## ---- JSON / CSV helpers (full double precision): shared ---------------------
source("json_helpers.R")

## ---- extraction ---------------------------------------------------------------
describe_glm <- function(name, fit, dataset = NULL, data = NULL, weights = NULL) {
  s <- summary(fit)
  ct <- coef(s)
  ll <- logLik(fit)
  fam <- family(fit)
  list(
    name = name,
    engine = if (inherits(fit, "negbin")) "MASS::glm.nb" else "stats::glm",
    formula = paste(deparse(formula(fit), width.cutoff = 500L), collapse = " "),
    family = if (inherits(fit, "negbin")) "negative.binomial (NB2)" else fam$family,
    link = fam$link,
    dataset = dataset,
    data = data,
    weights = weights,
    coef_names = arr(rownames(ct)),
    coef = arr(ct[, 1]),
    se = arr(ct[, 2]),
    stat = arr(ct[, 3]),
    stat_name = colnames(ct)[3],
    p = arr(ct[, 4]),
    vcov = rows(vcov(fit)),
    loglik = as.numeric(ll),
    df = attr(ll, "df"),
    aic = AIC(fit),
    bic = BIC(fit),
    deviance = deviance(fit),
    null_deviance = fit$null.deviance,
    df_residual = df.residual(fit),
    df_null = fit$df.null,
    dispersion = s$dispersion,
    nobs = nobs(fit),
    iterations = fit$iter,
    converged = fit$converged,
    fitted_head = arr(unname(head(fitted(fit), 10)))
  )
}

models <- list()
add <- function(m) {
  cat(sprintf("%-26s -2logLik = %.10f  dev = %.10f\n", m$name, -2 * m$loglik,
              if (is.null(m$deviance)) NA else m$deviance))
  models[[m$name]] <<- m
}

## ---- binomial on cbpp (proportion response with binomial totals as weights) ----
for (lk in c("logit", "probit", "cloglog")) {
  fit <- glm(incidence / size ~ period, family = binomial(link = lk), data = cbpp, weights = size)
  add(describe_glm(paste0("cbpp_binomial_", lk), fit, dataset = "cbpp", weights = "size"))
}

## ---- poisson with offset (simulated) --------------------------------------------
set.seed(20240601)
n <- 300
sim <- data.frame(x = rnorm(n), f = sample(c("a", "b", "c"), n, replace = TRUE),
                  exposure = runif(n, 0.5, 3))
eff_f <- c(a = 0, b = 0.4, c = -0.3)
sim$y <- rpois(n, sim$exposure * exp(0.3 + 0.5 * sim$x + eff_f[sim$f]))
sim$y <- as.integer(sim$y)
dd <- write_data(sim, "glm_poisson_offset.csv")
fit <- glm(y ~ x + f + offset(log(exposure)), family = poisson(), data = dd$data)
add(describe_glm("poisson_offset", fit, data = dd$path))

## ---- Gamma, log and inverse links (simulated, same data) -------------------------
set.seed(20240602)
sim <- data.frame(x = runif(n))
mu <- exp(1 + 0.8 * sim$x)
sim$y <- rgamma(n, shape = 3, rate = 3 / mu)
dd <- write_data(sim, "glm_gamma.csv")
fit <- glm(y ~ x, family = Gamma(link = "log"), data = dd$data)
add(describe_glm("gamma_log", fit, data = dd$path))
fit <- glm(y ~ x, family = Gamma(link = "inverse"), data = dd$data)
stopifnot(fit$converged, all(fitted(fit) > 0))
add(describe_glm("gamma_inverse", fit, data = dd$path))

## ---- inverse Gaussian, links 1/mu^2 and log (simulated, same data) ---------------
# Michael, Schucany & Haas (1976) generator: IG(mean = mu, shape = lambda).
rinvgauss_msh <- function(n, mu, lambda) {
  v <- rnorm(n)^2
  x1 <- mu + mu^2 * v / (2 * lambda) - mu / (2 * lambda) * sqrt(4 * mu * lambda * v + mu^2 * v^2)
  u <- runif(n)
  ifelse(u <= mu / (mu + x1), x1, mu^2 / x1)
}
set.seed(20240603)
sim <- data.frame(x = runif(n))
mu <- 1 / sqrt(0.4 + 0.8 * sim$x)     # 1/mu^2 = 0.4 + 0.8 x
sim$y <- rinvgauss_msh(n, mu, lambda = 4)
dd <- write_data(sim, "glm_inverse_gaussian.csv")
fit <- glm(y ~ x, family = inverse.gaussian(), data = dd$data)
stopifnot(fit$converged)
add(describe_glm("inverse_gaussian_default", fit, data = dd$path))
fit <- glm(y ~ x, family = inverse.gaussian(link = "log"), data = dd$data)
stopifnot(fit$converged)
add(describe_glm("inverse_gaussian_log", fit, data = dd$path))

## ---- NB2 on Salamanders (MASS::glm.nb) -------------------------------------------
fit <- glm.nb(count ~ spp + mined, data = Salamanders)
m <- describe_glm("salamanders_nb2", fit, dataset = "salamanders")
m$theta <- fit$theta
m$theta_se <- fit$SE.theta
m$twologlik <- fit$twologlik
m$theta_note <- "NB2: Var(y) = mu + mu^2/theta; glm.nb's logLik df counts theta"
add(m)

## ---- beta regression (glmmTMB, simulated) ----------------------------------------
set.seed(20240604)
sim <- data.frame(x = rnorm(n))
mu <- plogis(0.2 + 0.7 * sim$x)
sim$y <- rbeta(n, mu * 8, (1 - mu) * 8)
stopifnot(all(sim$y > 0 & sim$y < 1))
dd <- write_data(sim, "glm_beta.csv")
fit <- glmmTMB(y ~ x, family = beta_family(), data = dd$data)
ct <- coef(summary(fit))$cond
ll <- logLik(fit)
fixed <- summary(fit$sdr, "fixed")
add(list(
  name = "beta_logit",
  engine = "glmmTMB",
  formula = "y ~ x",
  family = "beta",
  link = "logit",
  dataset = NULL,
  data = dd$path,
  weights = NULL,
  coef_names = arr(rownames(ct)),
  coef = arr(ct[, 1]),
  se = arr(ct[, 2]),
  stat = arr(ct[, 3]),
  stat_name = colnames(ct)[3],
  p = arr(ct[, 4]),
  vcov = rows(vcov(fit)$cond),
  loglik = as.numeric(ll),
  df = attr(ll, "df"),
  aic = AIC(fit),
  bic = BIC(fit),
  deviance = NULL,
  null_deviance = NULL,
  df_residual = df.residual(fit),
  dispersion = NULL,
  nobs = nobs(fit),
  phi = sigma(fit),
  log_phi = unname(fixed["betad", "Estimate"]),
  log_phi_se = unname(fixed["betad", "Std. Error"]),
  phi_note = "beta_family: Var(y) = mu(1-mu)/(1+phi); phi = sigma(fit) = exp(betad)",
  converged = fit$fit$convergence == 0,
  fitted_head = arr(unname(head(fitted(fit), 10)))
))

## ---- gaussian identity: Reaction ~ Days on sleepstudy ----------------------------
fit <- glm(Reaction ~ Days, family = gaussian(), data = sleepstudy)
add(describe_glm("sleepstudy_gaussian", fit, dataset = "sleepstudy"))

## ---- binary logistic with a factor response (Contraception) ----------------------
fit <- glm(use ~ age + I(age^2) + urban + livch, family = binomial(), data = Contraception)
m <- describe_glm("contraception_logit", fit, dataset = "contraception")
m$response_note <- "use is a factor with levels N, Y; Y (second level) is success"
add(m)

versions <- list(
  R = R.version.string,
  stats = as.character(packageVersion("stats")),
  MASS = as.character(packageVersion("MASS")),
  glmmTMB = as.character(packageVersion("glmmTMB")),
  TMB = as.character(packageVersion("TMB")),
  lme4 = as.character(packageVersion("lme4")),
  mlmRev = as.character(packageVersion("mlmRev")),
  jsonlite = as.character(packageVersion("jsonlite"))
)

save_json(list(versions = versions, models = models), "glm.json")
cat("wrote glm.json\n")
