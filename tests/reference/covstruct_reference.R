# covstruct_reference.R -- reference fits with structured random-effects covariances.
#
# Produces: covstruct.json and data/covstruct_*.csv (next to this script).
# Run:      cd tests/reference && Rscript covstruct_reference.R      (under a minute)
#
# Every model is fitted with glmmTMB 1.1.5 (ML, REML = FALSE, its default), whose
# structures glmmjax implements with the same syntax: diag, cs (heterogeneous compound
# symmetry), ar1 (stationary AR(1) over the levels of a factor of equally spaced
# times), toep (heterogeneous Toeplitz) and ou (Ornstein-Uhlenbeck over unequally spaced
# times: glmmTMB reads them from a numFactor's levels, glmmjax from the numbers in a
# categorical column's levels; the formula written to the JSON is glmmjax's), and the
# spatial exp and gau over points whose coordinates are written in the levels ("(x,y)",
# numFactor's labels, which glmmjax reads too; the tests build that column, pos, from cx
# and cy in numFactor's level order), and the Matern mat on the same points (TMB's
# matern(d, phi, nu) = (d/phi)^nu K_nu(d/phi) / (Gamma(nu) 2^(nu - 1)); glmmTMB's theta is
# log sd, log phi, log nu, the smoothness nu estimated, not fixed). glmmTMB 1.1.5 has no homogeneous compound symmetry (homcs came later); its
# reference here is the equivalent unstructured model (1 | g) + (1 | g:t), whose
# covariance over the times of one g is s_g^2 11' + s_gt^2 I: homcs with
# sd = sqrt(s_g^2 + s_gt^2) and rho = s_g^2 / sd^2 (>= 0).
#
# glmmTMB's theta parameterization differs from lme4's; everything is compared on the
# scale of standard deviations and correlations.
#
# Layout: {"versions": {...}, "models": {name: {...}}}. Per model: name, dataset
# (bundled with glmmjax) or data (CSV path), formula (glmmjax syntax), family,
# minus2loglik (2 x glmmTMB's objective, which is its negative log-likelihood; also
# where glmmTMB's Hessian is not positive definite and logLik() says NA), fixef_names,
# fixef, sigma (gaussian), re: a list of {group, structure, sd: [per effect], corr:
# matrix (rows)}, pdHess, convergence (optimizer message), fit_seconds.

suppressPackageStartupMessages({
  library(lme4)
  library(glmmTMB)
  library(jsonlite)
})
source("json_helpers.R")

write_csv17 <- function(frame, path) {
  out <- frame
  for (k in names(out)) if (is.double(out[[k]])) out[[k]] <- num2str(out[[k]])
  write.csv(out, path, row.names = FALSE, quote = FALSE)
}

# Simulated data: written first, then read back so the fits use exactly the CSV values.
set.seed(17)
ar1_cor <- function(k, rho) rho^abs(outer(seq_len(k), seq_len(k), "-"))
draw <- function(m, sigma) t(chol(sigma)) %*% matrix(rnorm(nrow(sigma) * m), nrow(sigma))

# Gaussian, 30 subjects x 6 times x 2 replicates, AR(1) subject-time effects.
{
  m <- 30; k <- 6
  b <- draw(m, 1.2^2 * ar1_cor(k, 0.6))
  g <- rep(sprintf("s%02d", 1:m), each = k * 2)
  t <- rep(rep(0:(k - 1), each = 2), m)
  x <- round(rnorm(m * k * 2), 6)
  y <- 2 + 0.5 * x + b[cbind(t + 1, rep(1:m, each = k * 2))] + rnorm(m * k * 2, sd = 0.7)
  write_csv17(data.frame(y = y, x = x, time = t, subject = g), "data/covstruct_gaussian.csv")
}
# Poisson, 40 groups x 6 times, one count each, AR(1) group-time effects.
{
  m <- 40; k <- 6
  b <- draw(m, 0.6^2 * ar1_cor(k, 0.7))
  g <- rep(sprintf("g%02d", 1:m), each = k)
  t <- rep(0:(k - 1), m)
  x <- round(rnorm(m * k), 6)
  y <- rpois(m * k, exp(0.5 + 0.3 * x + b[cbind(t + 1, rep(1:m, each = k))]))
  write.csv(data.frame(y = y, x = x, time = t, group = g), "data/covstruct_poisson.csv",
            row.names = FALSE, quote = FALSE)
}
# Binomial, 40 clusters x 4 conditions, 10 trials each, heterogeneous CS effects.
{
  m <- 40; k <- 4
  sds <- c(0.5, 0.8, 1.0, 0.7)
  R <- matrix(0.5, k, k); diag(R) <- 1
  b <- draw(m, diag(sds) %*% R %*% diag(sds))
  g <- rep(sprintf("c%02d", 1:m), each = k)
  cond <- rep(c("a", "b", "c", "d"), m)
  s <- rbinom(m * k, 10, plogis(-0.3 + c(0, 0.4, -0.2, 0.6)[match(cond, c("a", "b", "c", "d"))]
                                + b[cbind(match(cond, c("a", "b", "c", "d")), rep(1:m, each = k))]))
  write.csv(data.frame(s = s, n = 10, cond = cond, cluster = g), "data/covstruct_binomial.csv",
            row.names = FALSE, quote = FALSE)
}

# Gaussian, 30 subjects x 5 unequally spaced times x 2 replicates, OU subject-time
# effects (correlation 0.6 at distance 1).
ou_cor <- function(t, rho) rho^abs(outer(t, t, "-"))
ou_times <- c(0, 0.5, 1.5, 3, 5)
{
  m <- 30; k <- length(ou_times)
  b <- draw(m, 1.1^2 * ou_cor(ou_times, 0.6))
  g <- rep(sprintf("s%02d", 1:m), each = k * 2)
  i <- rep(rep(1:k, each = 2), m)
  x <- round(rnorm(m * k * 2), 6)
  y <- 1 + 0.5 * x + b[cbind(i, rep(1:m, each = k * 2))] + rnorm(m * k * 2, sd = 0.6)
  write_csv17(data.frame(y = y, x = x, time = ou_times[i], subject = g),
              "data/covstruct_gaussian_ou.csv")
}
# Poisson, 50 groups x the same times, one count each, OU group-time effects.
{
  m <- 50; k <- length(ou_times)
  b <- draw(m, 0.7^2 * ou_cor(ou_times, 0.5))
  g <- rep(sprintf("g%02d", 1:m), each = k)
  i <- rep(1:k, m)
  x <- round(rnorm(m * k), 6)
  y <- rpois(m * k, exp(0.8 + 0.3 * x + b[cbind(i, rep(1:m, each = k))]))
  write.csv(data.frame(y = y, x = x, time = ou_times[i], group = g),
            "data/covstruct_poisson_ou.csv", row.names = FALSE, quote = FALSE)
}
# Binomial, 80 clusters x 4 visits, 12 trials each, heterogeneous Toeplitz effects
# (glmmTMB 1.1.5's toep fails on the cs data above: "infinite or missing values" in
# its Hessian check).
{
  m <- 80; k <- 4
  sds <- c(0.6, 0.9, 0.8, 0.7)
  b <- draw(m, diag(sds) %*% toeplitz(c(1, 0.6, 0.3, 0.1)) %*% diag(sds))
  g <- rep(sprintf("c%02d", 1:m), each = k)
  i <- rep(1:k, m)
  x <- round(rnorm(m * k), 6)
  s <- rbinom(m * k, 12, plogis(-0.2 + 0.4 * x + b[cbind(i, rep(1:m, each = k))]))
  write.csv(data.frame(s = s, n = 12, x = x, visit = paste0("v", i), cluster = g),
            "data/covstruct_binomial_toep.csv", row.names = FALSE, quote = FALSE)
}
# Spatial: 30 plots x 9 points of a 3 x 3 grid x 2 replicates, exponential-correlation
# plot-point effects (scale 1.5); a Gaussian response and a Poisson count from the same
# effects.
{
  grid <- expand.grid(cx = 0:2, cy = 0:2)
  m <- 30; k <- nrow(grid)
  b <- draw(m, exp(-as.matrix(dist(grid)) / 1.5))
  g <- rep(sprintf("p%02d", 1:m), each = k * 2)
  i <- rep(rep(1:k, each = 2), m)
  x <- round(rnorm(m * k * 2), 6)
  effect <- b[cbind(i, rep(1:m, each = k * 2))]
  y <- 1 + 0.5 * x + effect + rnorm(m * k * 2, sd = 0.5)
  count <- rpois(m * k * 2, exp(0.3 + 0.3 * x + 0.6 * effect))
  write_csv17(data.frame(y = y, count = count, x = x, cx = grid$cx[i], cy = grid$cy[i],
                         plot = g), "data/covstruct_spatial.csv")
}

data(sleepstudy, package = "lme4")
sleepstudy$dayf <- factor(sleepstudy$Days)
gauss <- read.csv("data/covstruct_gaussian.csv", colClasses = c(subject = "character"))
gauss$timef <- factor(gauss$time)
pois <- read.csv("data/covstruct_poisson.csv", colClasses = c(group = "character"))
pois$timef <- factor(pois$time)
binom <- read.csv("data/covstruct_binomial.csv", colClasses = c(cluster = "character"))
binom$cond <- factor(binom$cond)
binom_toep <- read.csv("data/covstruct_binomial_toep.csv",
                       colClasses = c(cluster = "character"))
binom_toep$visit <- factor(binom_toep$visit)
spatial <- read.csv("data/covstruct_spatial.csv", colClasses = c(plot = "character"))
spatial$pos <- numFactor(spatial$cx, spatial$cy)
gauss_ou <- read.csv("data/covstruct_gaussian_ou.csv", colClasses = c(subject = "character"))
gauss_ou$times <- numFactor(gauss_ou$time)
pois_ou <- read.csv("data/covstruct_poisson_ou.csv", colClasses = c(group = "character"))
pois_ou$times <- numFactor(pois_ou$time)

structure_of <- function(m, i) {
  names(m$modelInfo$reStruc[[1]][[i]]$blockCode)
}

reference <- function(name, formula, data, data_ref, family = gaussian(), tmb_formula = formula,
                      homcs = NULL) {
  t0 <- proc.time()[["elapsed"]]
  fit <- glmmTMB(as.formula(tmb_formula), data = data, family = family)
  seconds <- proc.time()[["elapsed"]] - t0
  vc <- VarCorr(fit)$cond
  re <- lapply(seq_along(vc), function(i) {
    v <- vc[[i]]
    list(group = names(vc)[i], structure = structure_of(fit, i), sd = arr(attr(v, "stddev")),
         corr = lapply(seq_len(nrow(v)), function(i) arr(attr(v, "correlation")[i, ])))
  })
  if (!is.null(homcs)) re <- homcs(vc)
  out <- list(name = name, formula = formula, family = family$family,
              minus2loglik = 2 * fit$fit$objective,
              fixef_names = arr(names(fixef(fit)$cond)), fixef = arr(unname(fixef(fit)$cond)),
              re = re, pdHess = fit$sdr$pdHess, convergence = fit$fit$message,
              fit_seconds = seconds)
  out[[names(data_ref)]] <- data_ref[[1]]
  if (family$family == "gaussian") out$sigma <- sigma(fit)
  out
}

# homcs from (1 | g) + (1 | g:t): sd^2 = s_g^2 + s_gt^2, rho = s_g^2 / sd^2.
homcs_from <- function(group, inner, k) function(vc) {
  a <- attr(vc[[group]], "stddev")^2
  b <- attr(vc[[inner]], "stddev")^2
  rho <- unname(a / (a + b))
  corr <- matrix(rho, k, k); diag(corr) <- 1
  list(list(group = group, structure = "homcs", sd = arr(rep(sqrt(unname(a + b)), k)),
            corr = lapply(seq_len(k), function(i) arr(corr[i, ]))))
}

models <- list(
  reference("sleepstudy_diag", "Reaction ~ Days + diag(1 + Days | Subject)", sleepstudy,
            list(dataset = "sleepstudy")),
  reference("sleepstudy_cs", "Reaction ~ Days + cs(dayf + 0 | Subject)", sleepstudy,
            list(dataset = "sleepstudy")),
  reference("sleepstudy_ar1", "Reaction ~ Days + (1 | Subject) + ar1(dayf + 0 | Subject)",
            sleepstudy, list(dataset = "sleepstudy")),
  reference("gaussian_ar1", "y ~ x + ar1(timef + 0 | subject)", gauss,
            list(data = "data/covstruct_gaussian.csv")),
  reference("gaussian_homcs", "y ~ x + homcs(timef + 0 | subject)", gauss,
            list(data = "data/covstruct_gaussian.csv"),
            tmb_formula = "y ~ x + (1 | subject) + (1 | subject:timef)",
            homcs = homcs_from("subject", "subject:timef", 6)),
  reference("poisson_ar1", "y ~ x + ar1(timef + 0 | group)", pois,
            list(data = "data/covstruct_poisson.csv"), family = poisson()),
  reference("binomial_cs", "cbind(s, n - s) ~ cond + cs(cond + 0 | cluster)", binom,
            list(data = "data/covstruct_binomial.csv"), family = binomial()),
  reference("binomial_diag", "cbind(s, n - s) ~ cond + diag(cond + 0 | cluster)", binom,
            list(data = "data/covstruct_binomial.csv"), family = binomial()),
  reference("gaussian_toep", "y ~ x + toep(timef + 0 | subject)", gauss,
            list(data = "data/covstruct_gaussian.csv")),
  reference("binomial_toep", "cbind(s, n - s) ~ x + toep(visit + 0 | cluster)", binom_toep,
            list(data = "data/covstruct_binomial_toep.csv"), family = binomial()),
  reference("gaussian_ou", "y ~ x + ou(timef + 0 | subject)", gauss_ou,
            list(data = "data/covstruct_gaussian_ou.csv"),
            tmb_formula = "y ~ x + ou(times + 0 | subject)"),
  reference("poisson_ou", "y ~ x + ou(timef + 0 | group)", pois_ou,
            list(data = "data/covstruct_poisson_ou.csv"), family = poisson(),
            tmb_formula = "y ~ x + ou(times + 0 | group)"),
  reference("spatial_exp", "y ~ x + exp(pos + 0 | plot)", spatial,
            list(data = "data/covstruct_spatial.csv")),
  reference("spatial_gau", "y ~ x + gau(pos + 0 | plot)", spatial,
            list(data = "data/covstruct_spatial.csv")),
  reference("spatial_poisson_exp", "count ~ x + exp(pos + 0 | plot)", spatial,
            list(data = "data/covstruct_spatial.csv"), family = poisson()),
  reference("spatial_mat", "y ~ x + mat(pos + 0 | plot)", spatial,
            list(data = "data/covstruct_spatial.csv")),
  reference("spatial_poisson_mat", "count ~ x + mat(pos + 0 | plot)", spatial,
            list(data = "data/covstruct_spatial.csv"), family = poisson())
)
names(models) <- vapply(models, function(m) m$name, "")
save_json(list(versions = list(R = R.version.string,
                               glmmTMB = as.character(packageVersion("glmmTMB"))),
               models = models), "covstruct.json")
