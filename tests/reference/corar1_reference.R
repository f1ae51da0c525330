# corar1_reference.R -- reference fits with nlme's residual corAR1 within groups.
#
# Produces: corar1.json and data/corar1_demand.csv (next to this script).
# Run:      cd tests/reference && Rscript corar1_reference.R      (a few seconds)
#
# Gaussian LMMs fitted with nlme::lme, correlation = corAR1(form = ~ time | group): the
# residuals of one group have correlation rho^|t_i - t_j| (the times are integers; with
# gaps between them nlme switches to corARMA(p = 1), the same correlation at the gaps'
# lags). glmmjax fits them as lmer(formula, data, correlation=cor_ar1(time=, group=)).
# Models: sleepstudy with a random intercept (ML and REML) and with a random slope (REML),
# and simulated daily sales of stores nested in regions with AR(1) errors within store and
# some days missing (gaps), random intercepts of region and store (ML and REML).
#
# Layout: {"versions": {...}, "models": {name: {...}}}. Per model: dataset (bundled with
# glmmjax) or data (CSV path), formula (glmmjax syntax), time, group (the correlation's
# columns), reml, minus2loglik (-2 logLik: the REML log-likelihood for REML fits), fixef_names,
# fixef, fixef_se (nlme's, conditional on the variance parameters), re: {grouping factor: SDs of its effects}, corr (the slope model's
# intercept-slope correlation), sigma, rho, fit_seconds.

suppressPackageStartupMessages({
  library(nlme)
  library(lme4)  # sleepstudy
  library(jsonlite)
})
source("json_helpers.R")

write_csv17 <- function(frame, path) {
  out <- frame
  for (k in names(out)) if (is.double(out[[k]])) out[[k]] <- num2str(out[[k]])
  write.csv(out, path, row.names = FALSE, quote = FALSE)
}

# Simulated: 12 stores in 3 regions, 40 days, AR(1) errors (rho 0.6, SD 0.25) within
# store; about 10% of the days dropped at random, so the series have gaps.
set.seed(171)
{
  S <- 12; R <- 3; D <- 40
  region_of <- (seq_len(S) - 1) %% R + 1
  a_r <- rnorm(R, sd = 0.3); a_s <- rnorm(S, sd = 0.4)
  rows <- list()
  for (s in seq_len(S)) {
    e <- numeric(D); e[1] <- rnorm(1, sd = 0.25)
    for (d in 2:D) e[d] <- 0.6 * e[d - 1] + rnorm(1, sd = 0.25 * sqrt(1 - 0.36))
    promo <- as.numeric(runif(D) < 0.15)
    y <- 4 + 0.35 * promo + a_r[region_of[s]] + a_s[s] + e
    keep <- runif(D) > 0.1
    rows[[s]] <- data.frame(store = sprintf("S%02d", s), region = sprintf("R%d", region_of[s]),
                            day = (0:(D - 1))[keep], promo = promo[keep], log_sales = y[keep])
  }
  write_csv17(do.call(rbind, rows), "data/corar1_demand.csv")
}
demand <- read.csv("data/corar1_demand.csv", colClasses = c(store = "character",
                                                           region = "character"))
data(sleepstudy, package = "lme4")

reference <- function(name, formula, data_ref, fit_call, time, group, slope = FALSE) {
  t0 <- proc.time()[["elapsed"]]
  fit <- fit_call()
  seconds <- proc.time()[["elapsed"]] - t0
  # exact covariances (VarCorr() prints rounded text): reStruct's are relative to sigma^2
  covs <- lapply(as.matrix(fit$modelStruct$reStruct), function(m) m * fit$sigma^2)
  rho <- unname(coef(fit$modelStruct$corStruct, unconstrained = FALSE))
  out <- list(name = name, formula = formula, time = time, group = group,
              reml = fit$method == "REML", minus2loglik = -2 * as.numeric(logLik(fit)),
              fixef_names = arr(names(fixef(fit))), fixef = arr(unname(fixef(fit))),
              fixef_se = arr(unname(sqrt(diag(fit$varFix)))),
              sigma = fit$sigma, rho = rho, fit_seconds = seconds)
  out[[names(data_ref)]] <- data_ref[[1]]
  out$re <- lapply(covs, function(m) arr(sqrt(diag(m))))
  if (slope) out$corr <- covs[[1]][1, 2] / sqrt(covs[[1]][1, 1] * covs[[1]][2, 2])
  out
}

# Tight tolerances (nlme's defaults stop early); the random-slope model is fitted with
# optim (BFGS), as nlminb stops there with "singular convergence" or its iteration limit.
ctrl <- lmeControl(maxIter = 500, msMaxIter = 500, tolerance = 1e-10, msTol = 1e-12,
                   niterEM = 100)
models <- list(
  reference("sleepstudy_ml", "Reaction ~ Days + (1 | Subject)", list(dataset = "sleepstudy"),
            function() lme(Reaction ~ Days, random = ~ 1 | Subject, data = sleepstudy,
                           correlation = corAR1(form = ~ Days | Subject), method = "ML",
                           control = ctrl),
            "Days", "Subject"),
  reference("sleepstudy_reml", "Reaction ~ Days + (1 | Subject)", list(dataset = "sleepstudy"),
            function() lme(Reaction ~ Days, random = ~ 1 | Subject, data = sleepstudy,
                           correlation = corAR1(form = ~ Days | Subject), method = "REML",
                           control = ctrl),
            "Days", "Subject"),
  reference("sleepstudy_slope_reml", "Reaction ~ Days + (Days | Subject)",
            list(dataset = "sleepstudy"),
            function() lme(Reaction ~ Days, random = ~ Days | Subject, data = sleepstudy,
                           correlation = corAR1(form = ~ Days | Subject), method = "REML",
                           control = lmeControl(opt = "optim", maxIter = 500,
                                                msMaxIter = 500)),
            "Days", "Subject", slope = TRUE),
  reference("demand_ml", "log_sales ~ promo + (1 | store) + (1 | region)",
            list(data = "data/corar1_demand.csv"),
            function() lme(log_sales ~ promo, random = ~ 1 | region / store, data = demand,
                           correlation = corAR1(form = ~ day | region / store), method = "ML",
                           control = ctrl),
            "day", "store"),
  reference("demand_reml", "log_sales ~ promo + (1 | store) + (1 | region)",
            list(data = "data/corar1_demand.csv"),
            function() lme(log_sales ~ promo, random = ~ 1 | region / store, data = demand,
                           correlation = corAR1(form = ~ day | region / store),
                           method = "REML", control = ctrl),
            "day", "store")
)
names(models) <- vapply(models, function(m) m$name, "")
save_json(list(versions = list(R = R.version.string,
                               nlme = as.character(packageVersion("nlme"))),
               models = models), "corar1.json")
