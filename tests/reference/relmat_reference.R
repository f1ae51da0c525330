# relmat_reference.R -- reference fits with a known relatedness matrix (the animal model).
#
# Produces: relmat.json and data/relmat_*.csv (next to this script).
# Run:      cd tests/reference && Rscript relmat_reference.R      (a few seconds)
#
# pedigreemm is not installed here, so the models are fitted with lme4 by the "relmat
# trick" that lme4qtl and pedigreemm use: build the model with lFormula/glFormula, replace
# the term's Zt by t(L) %*% Zt with L L' = K (so b = L u), then run lme4's own optimizer
# and mkMerMod. Two matrices:
#   - pedigree: the additive relationship matrix A of a hand-built 3-generation pedigree
#     (10 founders, 50 descendants), by the tabular method; positive definite, L =
#     t(chol(A)).
#   - genomic: K = W W' / m from simulated SNP genotypes (50 individuals, 300 markers,
#     columns centred), which is singular (rank 49): L = U diag(sqrt(pmax(d, 0))) from
#     eigen(K), the factor glmmjax uses for a singular K.
#
# Layout: {"versions": {...}, "models": {name: {...}}}. Per model: data (CSV), kinship
# (CSV with a first column "id" naming rows and columns), formula, group, family, reml,
# minus2loglik (-2 logLik, or the REML criterion), fixef_names, fixef, sd (of the
# relatedness term), sigma (gaussian), b (conditional modes of the animals' effects,
# L %*% u, named by level), fit_seconds.

suppressPackageStartupMessages({
  library(lme4)
  library(Matrix)
  library(jsonlite)
})
source("json_helpers.R")

write_csv17 <- function(frame, path) {
  out <- frame
  for (k in names(out)) if (is.double(out[[k]])) out[[k]] <- num2str(out[[k]])
  write.csv(out, path, row.names = FALSE, quote = FALSE)
}
write_kinship <- function(K, path) {
  out <- data.frame(id = rownames(K))
  for (j in seq_len(ncol(K))) out[[colnames(K)[j]]] <- num2str(K[, j])
  write.csv(out, path, row.names = FALSE, quote = FALSE)
}
read_kinship <- function(path) {
  frame <- read.csv(path, check.names = FALSE, colClasses = c(id = "character"))
  K <- as.matrix(frame[, -1])
  rownames(K) <- frame$id
  K
}

set.seed(2017)

# -- pedigree and its additive relationship matrix (tabular method) -------------------
{
  ids <- sprintf("p%02d", 1:60)
  sire <- dam <- rep(NA_integer_, 60)
  gen2 <- 11:30; gen3 <- 31:60
  sire[gen2] <- sample(1:5, 20, TRUE); dam[gen2] <- sample(6:10, 20, TRUE)
  sire[gen3] <- sample(11:20, 30, TRUE); dam[gen3] <- sample(21:30, 30, TRUE)
  A <- matrix(0, 60, 60)
  for (i in 1:60) {
    s <- sire[i]; d <- dam[i]
    A[i, i] <- 1 + if (!is.na(s) && !is.na(d)) 0.5 * A[s, d] else 0
    if (i > 1) for (j in 1:(i - 1)) {
      a <- 0.5 * ((if (!is.na(s)) A[j, s] else 0) + (if (!is.na(d)) A[j, d] else 0))
      A[i, j] <- A[j, i] <- a
    }
  }
  dimnames(A) <- list(ids, ids)
  write_kinship(A, "data/relmat_pedigree_K.csv")
  b <- drop(t(chol(A)) %*% rnorm(60)) * 0.9
  n_rec <- sample(1:3, 60, TRUE)
  animal <- rep(ids, n_rec)
  x <- round(rnorm(length(animal)), 6)
  idx <- match(animal, ids)
  y <- round(3 + 0.6 * x + b[idx] + rnorm(length(animal), sd = 0.8), 6)
  eta <- -0.3 + 0.8 * x + b[idx]
  yb <- rbinom(length(animal), 1, plogis(eta))
  write_csv17(data.frame(y = y, yb = yb, x = x, animal = animal), "data/relmat_pedigree.csv")
}

# -- genomic relationship from simulated genotypes (singular) --------------------------
{
  n <- 50; m <- 300
  p <- runif(m, 0.1, 0.5)
  W <- sapply(p, function(pj) rbinom(n, 2, pj))
  W <- scale(W, center = TRUE, scale = FALSE)
  K <- tcrossprod(W) / sum(2 * p * (1 - p))
  ids <- sprintf("g%02d", 1:n)
  dimnames(K) <- list(ids, ids)
  write_kinship(K, "data/relmat_genomic_K.csv")
  e <- eigen(K, symmetric = TRUE)
  b <- drop(e$vectors %*% (sqrt(pmax(e$values, 0)) * rnorm(n))) * 0.5
  animal <- rep(ids, each = 3)
  x <- round(rnorm(3 * n), 6)
  count <- rpois(3 * n, exp(0.5 + 0.4 * x + b[match(animal, ids)]))
  write_csv17(data.frame(count = count, ly = round(log1p(count), 6), x = x, animal = animal),
              "data/relmat_genomic.csv")
}

factor_of <- function(K) {
  L <- tryCatch(t(chol(K)), error = function(e) NULL)
  if (is.null(L)) {
    e <- eigen(K, symmetric = TRUE)
    L <- e$vectors %*% diag(sqrt(pmax(e$values, 0)))
  }
  dimnames(L) <- dimnames(K)
  L
}

relmat_fit <- function(formula, data, K, group, family = NULL, reml = TRUE) {
  t0 <- proc.time()[["elapsed"]]
  lf <- if (is.null(family)) lFormula(formula, data, REML = reml) else
    glFormula(formula, data, family = family)
  levels <- levels(lf$reTrms$flist[[group]])
  L <- factor_of(K[levels, levels])
  lf$reTrms$Zt <- as(t(L) %*% lf$reTrms$Zt, "CsparseMatrix")
  if (is.null(family)) {
    devfun <- do.call(mkLmerDevfun, lf)
    opt <- optimizeLmer(devfun, control = list(xtol_abs = 1e-10, ftol_abs = 1e-12))
  } else {
    devfun <- do.call(mkGlmerDevfun, lf)
    opt <- optimizeGlmer(devfun)
    devfun <- updateGlmerDevfun(devfun, lf$reTrms)
    opt <- optimizeGlmer(devfun, optimizer = "nloptwrap", stage = 2,
                         control = list(xtol_abs = 1e-10, ftol_abs = 1e-12))
  }
  fit <- mkMerMod(environment(devfun), opt, lf$reTrms, fr = lf$fr)
  seconds <- proc.time()[["elapsed"]] - t0
  u <- ranef(fit)[[group]][, 1]
  b <- drop(L %*% u)
  vc <- as.data.frame(VarCorr(fit))
  list(fit = fit, seconds = seconds, b = setNames(b, levels),
       sd = vc$sdcor[vc$grp == group][1],
       m2ll = if (is.null(family) && reml) unname(REMLcrit(fit)) else -2 * as.numeric(logLik(fit)))
}

record <- function(name, data_path, kinship_path, formula, group, family, reml) {
  data <- read.csv(data_path, colClasses = c(animal = "character"))
  K <- read_kinship(kinship_path)
  r <- relmat_fit(as.formula(formula), data, K, group,
                  family = if (family == "gaussian") NULL else get(family)(), reml = reml)
  out <- list(name = name, data = sub("^data/", "", data_path),
              kinship = sub("^data/", "", kinship_path), formula = formula, group = group,
              family = family, reml = reml, minus2loglik = r$m2ll,
              fixef_names = arr(names(fixef(r$fit))), fixef = arr(unname(fixef(r$fit))),
              sd = r$sd, b_levels = arr(names(r$b)), b = arr(unname(r$b)),
              fit_seconds = r$seconds)
  if (family == "gaussian") out$sigma <- sigma(r$fit)
  out
}

models <- list(
  record("pedigree_lmm_reml", "data/relmat_pedigree.csv", "data/relmat_pedigree_K.csv",
         "y ~ x + (1 | animal)", "animal", "gaussian", TRUE),
  record("pedigree_lmm_ml", "data/relmat_pedigree.csv", "data/relmat_pedigree_K.csv",
         "y ~ x + (1 | animal)", "animal", "gaussian", FALSE),
  record("pedigree_binomial", "data/relmat_pedigree.csv", "data/relmat_pedigree_K.csv",
         "yb ~ x + (1 | animal)", "animal", "binomial", FALSE),
  record("genomic_poisson", "data/relmat_genomic.csv", "data/relmat_genomic_K.csv",
         "count ~ x + (1 | animal)", "animal", "poisson", FALSE),
  record("genomic_lmm_reml_singular_K", "data/relmat_genomic.csv", "data/relmat_genomic_K.csv",
         "ly ~ x + (1 | animal)", "animal", "gaussian", TRUE)
)
names(models) <- vapply(models, `[[`, "", "name")
save_json(list(versions = list(R = R.version.string,
                               lme4 = as.character(packageVersion("lme4"))),
               models = models), "relmat.json")
cat("wrote relmat.json\n")
for (m in models) cat(sprintf("%-30s -2logL %.8f  sd %.6f  %.2fs\n", m$name, m$minus2loglik, m$sd, m$fit_seconds))
