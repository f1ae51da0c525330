# glmm_reference.R -- reference values for generalized linear mixed models.
#
# Produces: glmm.json and data/gamma_glmm.csv (next to this script).
# Run:      cd tests/reference && Rscript glmm_reference.R      (a few minutes)
#
# Every model is fitted with lme4 (glmer / glmer.nb) and with glmmTMB where both can
# fit it; the nAGQ = 25 fit is lme4 only (glmmTMB has no adaptive quadrature).
#
# Layout: {"versions": {...}, "models": {name: {...}}}.  Per model: name, dataset
# (bundled with glmmjax) or data (CSV path), formula, family, link, nAGQ, best
# (engine with the lower -2 log-likelihood: the better optimum is the reference),
# minus2loglik_diff (lme4 minus glmmTMB), and one object per engine under "lme4" and
# "glmmTMB" with: engine, fixef_names, fixef, fixef_se, vcov, re_sd ({group: {term:
# sd}}), theta (lme4: getME(fit, "theta"), relative Cholesky factors; glmmTMB:
# tmb_theta, its log-SD parametrisation), minus2loglik, loglik, df, aic, bic, nobs,
# ngroups, sigma / dispersion where the family has one, ranef_head ({group:
# {levels, columns, values}} for the first 5 levels), fit_seconds, warnings.
#
# Notes:
#  * Binomial responses given as cbind(successes, failures); the log-likelihoods of
#    both engines include the log binomial coefficients.
#  * A factor response (r2, use) counts its second level (Y) as success.
#  * Gamma: lme4's sigma(fit) is sqrt(dispersion) = coefficient of variation and so
#    is glmmTMB's sigma(fit) (shape = 1/sigma^2).
#  * NB2: glmmTMB's sigma(fit) and lme4's getME(fit, "glmer.nb.theta") are the NB
#    size parameter theta: Var(y) = mu + mu^2/theta.

suppressPackageStartupMessages({
  library(lme4)
  library(glmmTMB)
  library(mlmRev)
  library(jsonlite)
})

## ---- JSON / CSV helpers (full double precision): shared ---------------------
source("json_helpers.R")

# Evaluate a fit, timing it and collecting its warnings.
timed_fit <- function(expr) {
  warns <- character()
  t0 <- proc.time()[["elapsed"]]
  fit <- withCallingHandlers(expr, warning = function(w) {
    warns <<- c(warns, conditionMessage(w))
    invokeRestart("muffleWarning")
  })
  list(fit = fit, seconds = proc.time()[["elapsed"]] - t0, warnings = warns)
}

ranef_head <- function(re) {
  out <- list()
  for (g in names(re)) {
    v <- as.matrix(re[[g]])
    k <- min(5, nrow(v))
    out[[g]] <- list(levels = arr(rownames(v)[1:k]), columns = arr(colnames(v)),
                     values = rows(v[1:k, , drop = FALSE]))
  }
  out
}

## ---- extraction: lme4 ---------------------------------------------------------
describe_lme4 <- function(tf) {
  fit <- tf$fit
  ll <- logLik(fit)
  V <- as.matrix(vcov(fit))
  th <- getME(fit, "theta")
  vc <- as.data.frame(VarCorr(fit))
  vc <- vc[is.na(vc$var2) & vc$grp != "Residual", ]
  re_sd <- list()
  for (g in unique(vc$grp)) {
    s <- vc[vc$grp == g, ]
    re_sd[[g]] <- as.list(setNames(s$sdcor, s$var1))
  }
  fam <- family(fit)$family
  res <- list(
    engine = if (inherits(fit, "glmerMod") && grepl("Negative Binomial", fam)) "lme4::glmer.nb" else "lme4::glmer",
    nAGQ = getME(fit, "devcomp")$dims[["nAGQ"]],
    fixef_names = arr(names(fixef(fit))),
    fixef = arr(unname(fixef(fit))),
    fixef_se = arr(sqrt(diag(V))),
    vcov = rows(V),
    theta = arr(unname(th)),
    theta_names = arr(names(th)),
    re_sd = re_sd,
    minus2loglik = -2 * as.numeric(ll),
    loglik = as.numeric(ll),
    df = attr(ll, "df"),
    aic = AIC(fit),
    bic = BIC(fit),
    deviance = deviance(fit),
    nobs = nobs(fit),
    ngroups = as.list(ngrps(fit)),
    singular = isSingular(fit),
    ranef_head = ranef_head(ranef(fit)),
    fit_seconds = tf$seconds,
    warnings = arr(tf$warnings),
    convergence_messages = arr(as.character(unlist(fit@optinfo$conv$lme4$messages)))
  )
  if (fam == "Gamma") {
    res$sigma <- sigma(fit)
    res$dispersion <- sigma(fit)^2
  }
  if (grepl("Negative Binomial", fam)) res$nb_theta <- getME(fit, "glmer.nb.theta")
  res
}

## ---- extraction: glmmTMB ------------------------------------------------------
describe_tmb <- function(tf) {
  fit <- tf$fit
  ll <- logLik(fit)
  V <- as.matrix(vcov(fit)$cond)
  vc <- VarCorr(fit)$cond
  re_sd <- lapply(vc, function(m) as.list(attr(m, "stddev")))
  fam <- family(fit)$family
  res <- list(
    engine = "glmmTMB",
    fixef_names = arr(names(fixef(fit)$cond)),
    fixef = arr(unname(fixef(fit)$cond)),
    fixef_se = arr(sqrt(diag(V))),
    vcov = rows(V),
    tmb_theta = arr(unname(getME(fit, "theta"))),
    re_sd = re_sd,
    minus2loglik = -2 * as.numeric(ll),
    loglik = as.numeric(ll),
    df = attr(ll, "df"),
    aic = AIC(fit),
    bic = BIC(fit),
    nobs = nobs(fit),
    ngroups = as.list(sapply(fit$modelInfo$reTrms$cond$flist, nlevels)),
    ranef_head = ranef_head(ranef(fit)$cond),
    fit_seconds = tf$seconds,
    warnings = arr(tf$warnings),
    pdHess = fit$sdr$pdHess,
    optimizer_convergence = fit$fit$convergence
  )
  if (fam == "Gamma") {
    res$sigma <- sigma(fit)
    res$dispersion <- sigma(fit)^2
    res$shape <- 1 / sigma(fit)^2
  }
  if (fam == "nbinom2") res$nb_theta <- sigma(fit)
  res
}

## ---- comparing the two engines on one objective -------------------------------
# The -2 log-likelihoods the two packages report are not always on the same footing
# (lme4's AGQ deviance omits the saturated-model constant; lme4's Gamma GLMM fixes the
# dispersion at 1 while fitting), so the "best" engine is decided on a common
# objective: glmmTMB's Laplace -2 log-likelihood evaluated at each engine's estimates
# (for nAGQ = 1 this is the approximation both packages maximise).  For models with a
# single scalar random intercept the exact marginal -2 log-likelihood (1-D integrals
# by stats::integrate) is recorded as well.

# Estimates in a common form: beta, named random-intercept SDs, dispersion.
engine_params <- function(e) {
  list(beta = unlist(e$fixef),
       sd = sapply(e$re_sd, function(g) g[["(Intercept)"]]),
       nb_theta = e$nb_theta, sigma = e$sigma)
}

tmb_minus2ll_at <- function(tmbfit, p) {
  par <- tmbfit$fit$par
  par[names(par) == "beta"] <- p$beta
  par[names(par) == "theta"] <- log(p$sd[names(VarCorr(tmbfit)$cond)])
  fam <- family(tmbfit)$family
  if (fam == "nbinom2") par[["betad"]] <- log(p$nb_theta)
  if (fam == "Gamma") par[["betad"]] <- log(1 / p$sigma^2)      # glmmTMB: betad = log(shape)
  val <- 2 * tmbfit$obj$fn(par)
  invisible(tmbfit$obj$fn(tmbfit$fit$par))                        # restore the fitted state
  val
}

# Exact marginal -2 log-likelihood for one scalar random intercept per group.
# logf(eta, idx, p) gives the conditional log densities of observations idx.
exact_minus2ll <- function(X, group, logf, p) {
  eta0 <- as.vector(X %*% p$beta)
  sd <- unname(p$sd[1])
  total <- 0
  for (lev in levels(group)) {
    i <- which(group == lev)
    h <- function(b) vapply(b, function(bb) sum(logf(eta0[i] + bb, i, p)), 0) +
      dnorm(b, 0, sd, log = TRUE)
    mode <- optimize(h, c(-30 * sd - 5, 30 * sd + 5), maximum = TRUE, tol = 1e-12)$maximum
    hmax <- h(mode)
    eps <- 1e-4
    curv <- -(h(mode + eps) - 2 * hmax + h(mode - eps)) / eps^2
    s <- 1 / sqrt(curv)
    int <- integrate(function(b) exp(h(b) - hmax), mode - 40 * s, mode + 40 * s,
                     rel.tol = 1e-12, abs.tol = 0, subdivisions = 2000L)$value
    total <- total + log(int) + hmax
  }
  -2 * total
}

models <- list()
# exact: NULL or list(X = fixed-effects model matrix, group = factor, logf = function).
add <- function(name, info, lme4_fit = NULL, tmb_fit = NULL, exact = NULL) {
  m <- c(list(name = name), info)
  if (!"data" %in% names(m)) m["data"] <- list(NULL)
  if (!is.null(lme4_fit)) m$lme4 <- describe_lme4(lme4_fit)
  if (!is.null(tmb_fit)) m$glmmTMB <- describe_tmb(tmb_fit)
  engines <- intersect(c("lme4", "glmmTMB"), names(m))
  if (!is.null(tmb_fit)) {
    common <- sapply(engines, function(e) tmb_minus2ll_at(tmb_fit$fit, engine_params(m[[e]])))
    for (e in engines) m[[e]]$tmb_laplace_minus2loglik <- unname(common[e])
    m$common_objective <- "glmmTMB Laplace -2 log-likelihood at each engine's estimates (tmb_laplace_minus2loglik)"
    m$best <- names(common)[which.min(common)]
  } else {
    m$best <- engines[1]
  }
  if (length(engines) == 2) {
    m$minus2loglik_diff <- m$lme4$minus2loglik - m$glmmTMB$minus2loglik
    m$best_by_reported <- if (m$minus2loglik_diff <= 0) "lme4" else "glmmTMB"
  }
  if (!is.null(exact)) {
    for (e in engines)
      m[[e]]$exact_minus2loglik <- exact_minus2ll(exact$X, exact$group, exact$logf, engine_params(m[[e]]))
  }
  cat(sprintf("%-16s best = %s\n", name, m$best))
  for (e in engines) {
    x <- m[[e]]
    cat(sprintf("   %-8s reported -2ll = %.8f  tmb-laplace@est = %s  exact = %s  (%.1fs)\n", e,
                x$minus2loglik,
                if (is.null(x$tmb_laplace_minus2loglik)) "-" else sprintf("%.8f", x$tmb_laplace_minus2loglik),
                if (is.null(x$exact_minus2loglik)) "-" else sprintf("%.8f", x$exact_minus2loglik),
                x$fit_seconds))
    for (w in x$warnings) cat("      warning:", w, "\n")
  }
  models[[name]] <<- m
}

# Conditional log densities used by exact_minus2ll.
logf_binom <- function(succ, tot) function(eta, i, p) dbinom(succ[i], tot[i], plogis(eta), log = TRUE)
logf_nb2 <- function(y) function(eta, i, p) dnbinom(y[i], size = p$nb_theta, mu = exp(eta), log = TRUE)
logf_gamma <- function(y) function(eta, i, p) {
  shape <- 1 / p$sigma^2
  dgamma(y[i], shape = shape, rate = shape / exp(eta), log = TRUE)
}

## ---- cbpp: Laplace and AGQ(25) --------------------------------------------------
f_cbpp <- cbind(incidence, size - incidence) ~ period + (1 | herd)
info <- list(dataset = "cbpp", formula = "cbind(incidence, size - incidence) ~ period + (1 | herd)",
             family = "binomial", link = "logit")
ex_cbpp <- list(X = model.matrix(~ period, cbpp), group = cbpp$herd,
                logf = logf_binom(cbpp$incidence, cbpp$size))
add("cbpp_laplace", c(info, nAGQ = 1),
    timed_fit(glmer(f_cbpp, data = cbpp, family = binomial, nAGQ = 1)),
    timed_fit(glmmTMB(f_cbpp, data = cbpp, family = binomial)), exact = ex_cbpp)
# lme4's nAGQ > 1 deviance is on the deviance-residual scale: it omits the
# saturated-model term -2 * sum(dbinom(y, n, y/n, log = TRUE)).
sat <- -2 * sum(dbinom(cbpp$incidence, cbpp$size, cbpp$incidence / cbpp$size, log = TRUE))
add("cbpp_agq25", c(info, nAGQ = 25,
                    saturated_minus2loglik = sat,
                    agq_note = paste("lme4 reports -2*logLik for nAGQ > 1 without the saturated-model",
                                     "constant: lme4 minus2loglik + saturated_minus2loglik is the",
                                     "AGQ(25) -2 log-likelihood, close to exact_minus2loglik")),
    timed_fit(glmer(f_cbpp, data = cbpp, family = binomial, nAGQ = 25)), exact = ex_cbpp)
models$cbpp_agq25$lme4$agq_minus2loglik_with_constant <- models$cbpp_agq25$lme4$minus2loglik + sat
cat(sprintf("   cbpp_agq25: lme4 -2ll + saturated constant = %.8f\n",
            models$cbpp_agq25$lme4$agq_minus2loglik_with_constant))

## ---- VerbAgg ----------------------------------------------------------------------
f_va <- r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)
add("verbagg", list(dataset = "verbagg", formula = "r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)",
                    family = "binomial", link = "logit", nAGQ = 1,
                    response_note = "r2 is a factor with levels N, Y; Y is success"),
    timed_fit(glmer(f_va, data = VerbAgg, family = binomial)),
    timed_fit(glmmTMB(f_va, data = VerbAgg, family = binomial)))

## ---- grouseticks -----------------------------------------------------------------
gt <- grouseticks
if (!"cHEIGHT" %in% names(gt)) gt$cHEIGHT <- gt$HEIGHT - mean(gt$HEIGHT)
f_gt <- TICKS ~ YEAR + cHEIGHT + (1 | INDEX) + (1 | BROOD) + (1 | LOCATION)
add("grouseticks", list(dataset = "grouseticks",
                        formula = "TICKS ~ YEAR + cHEIGHT + (1 | INDEX) + (1 | BROOD) + (1 | LOCATION)",
                        family = "poisson", link = "log", nAGQ = 1,
                        note = "cHEIGHT is the column shipped with lme4::grouseticks (HEIGHT centred)"),
    timed_fit(glmer(f_gt, data = gt, family = poisson)),
    timed_fit(glmmTMB(f_gt, data = gt, family = poisson)))

## ---- Contraception ---------------------------------------------------------------
f_ct <- use ~ age + I(age^2) + urban + livch + (1 | district)
add("contraception", list(dataset = "contraception",
                          formula = "use ~ age + I(age^2) + urban + livch + (1 | district)",
                          family = "binomial", link = "logit", nAGQ = 1,
                          response_note = "use is a factor with levels N, Y; Y is success"),
    timed_fit(glmer(f_ct, data = Contraception, family = binomial)),
    timed_fit(glmmTMB(f_ct, data = Contraception, family = binomial)),
    exact = list(X = model.matrix(~ age + I(age^2) + urban + livch, Contraception),
                 group = Contraception$district,
                 logf = logf_binom(as.integer(Contraception$use == "Y"), rep(1, nrow(Contraception)))))

## ---- Salamanders NB2 -------------------------------------------------------------
f_sal <- count ~ spp + mined + (1 | site)
nb_lme4 <- tryCatch(timed_fit(glmer.nb(f_sal, data = Salamanders)),
                    error = function(e) { cat("glmer.nb failed:", conditionMessage(e), "\n"); NULL })
add("salamanders_nb2", list(dataset = "salamanders", formula = "count ~ spp + mined + (1 | site)",
                            family = "nbinom2", link = "log", nAGQ = 1),
    nb_lme4,
    timed_fit(glmmTMB(f_sal, data = Salamanders, family = nbinom2)),
    exact = list(X = model.matrix(~ spp + mined, Salamanders), group = factor(Salamanders$site, ordered = FALSE),
                 logf = logf_nb2(Salamanders$count)))

## ---- Gamma GLMM (simulated) ------------------------------------------------------
set.seed(20240605)
ng <- 40; per <- 10
sim <- data.frame(g = sprintf("g%02d", rep(seq_len(ng), each = per)), x = rnorm(ng * per))
b <- rnorm(ng, 0, 0.5)
mu <- exp(1 + 0.5 * sim$x + b[rep(seq_len(ng), each = per)])
sim$y <- rgamma(ng * per, shape = 4, rate = 4 / mu)
dd <- write_data(sim, "gamma_glmm.csv")
f_gam <- y ~ x + (1 | g)
add("gamma_glmm", list(dataset = NULL, data = dd$path, formula = "y ~ x + (1 | g)",
                       family = "Gamma", link = "log", nAGQ = 1,
                       simulation = list(groups = ng, per_group = per, beta = arr(c(1, 0.5)),
                                         sd_g = 0.5, shape = 4, seed = 20240605)),
    timed_fit(glmer(f_gam, data = dd$data, family = Gamma(link = "log"))),
    timed_fit(glmmTMB(f_gam, data = dd$data, family = Gamma(link = "log"))),
    exact = list(X = model.matrix(~ x, dd$data), group = dd$data$g, logf = logf_gamma(dd$data$y)))

versions <- list(
  R = R.version.string,
  lme4 = as.character(packageVersion("lme4")),
  glmmTMB = as.character(packageVersion("glmmTMB")),
  TMB = as.character(packageVersion("TMB")),
  Matrix = as.character(packageVersion("Matrix")),
  mlmRev = as.character(packageVersion("mlmRev")),
  jsonlite = as.character(packageVersion("jsonlite")),
  optimizer_note = "glmer defaults: bobyqa then Nelder_Mead (nAGQ>0); glmmTMB default nlminb"
)

save_json(list(versions = versions, models = models), "glmm.json")
cat("wrote glmm.json\n")
