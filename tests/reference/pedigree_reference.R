# pedigree_reference.R -- a pedigree of 1,200 animals fitted with lme4 by the relmat trick, as
# the reference for glmmjax's sparse pedigree path (the test forces that path below its
# 2,000-level threshold: at 2,500 animals this script did not finish in 20 minutes here).
#
# Produces: pedigree.json, data/pedigree_animals.csv (animal, sire, dam) and
#           data/pedigree_records.csv (y, x, herd, animal), next to this script.
# Run:      cd tests/reference && Rscript pedigree_reference.R      (about a minute)
#
# pedigreemm is not in Debian, so A is built here by the tabular method (rows in birth
# order: A[i, j] = (A[s, j] + A[d, j]) / 2, A[i, i] = 1 + A[s, d] / 2) and the model is
# fitted by lme4's "relmat trick" (lme4qtl's and pedigreemm's): the animal term's rows of
# Zt are replaced by t(L) %*% Zt with L L' = A[levels, levels] (the recorded animals; the
# ancestors without records do not change the likelihood), then lme4's own optimizer.
# Three generations of 400 (10 sires per generation: inbreeding builds up), records on
# generations 2-3 with a herd effect (30 herds).
#
# Layout: {"versions": {...}, "models": {name: {formula, reml, minus2loglik, fixef_names,
# fixef, sd_animal, sd_herd, sigma, b_levels, b (animal BLUPs), fit_seconds,
# a_seconds}}}.

suppressPackageStartupMessages({
  library(lme4)
  library(Matrix)
  library(jsonlite)
})
source("json_helpers.R")

set.seed(1717)
G <- 3; N <- 400; q <- G * N
ids <- sprintf("a%04d", 1:q)
sire <- dam <- rep(NA_integer_, q)
for (g in 2:G) {
  prev <- ((g - 2) * N + 1):((g - 1) * N)
  now <- ((g - 1) * N + 1):(g * N)
  sires <- sample(prev[1:(N / 2)], 10)
  sire[now] <- sample(sires, N, TRUE)
  dam[now] <- sample(prev[(N / 2 + 1):N], N, TRUE)
}
# a few unknown parents among later animals
drop <- sample((N + 1):q, 20)
dam[drop] <- NA
t0 <- proc.time()[["elapsed"]]
A <- matrix(0, q, q)
for (i in 1:q) {
  s <- sire[i]; d <- dam[i]
  if (i > 1) {
    j <- 1:(i - 1)
    a <- 0.5 * ((if (!is.na(s)) A[s, j] else 0) + (if (!is.na(d)) A[d, j] else 0))
    A[i, j] <- a; A[j, i] <- a
  }
  A[i, i] <- 1 + if (!is.na(s) && !is.na(d)) 0.5 * A[s, d] else 0
}
a_seconds <- proc.time()[["elapsed"]] - t0
dimnames(A) <- list(ids, ids)
write.csv(data.frame(animal = ids, sire = ifelse(is.na(sire), "", ids[sire]),
                     dam = ifelse(is.na(dam), "", ids[dam])),
          "data/pedigree_animals.csv", row.names = FALSE, quote = FALSE)
L_all <- t(chol(A))
bv <- drop(L_all %*% rnorm(q)) * 0.8
recorded <- (N + 1):q
animal <- ids[recorded]
herd <- sprintf("h%02d", sample(1:30, length(animal), TRUE))
herd_effect <- setNames(rnorm(30, sd = 0.5), sprintf("h%02d", 1:30))
x <- round(rnorm(length(animal)), 6)
y <- round(10 + 0.5 * x + bv[recorded] + herd_effect[herd] + rnorm(length(animal)), 6)
records <- data.frame(y = y, x = x, herd = herd, animal = animal)
write.csv(data.frame(y = num2str(y), x = num2str(x), herd = herd, animal = animal),
          "data/pedigree_records.csv", row.names = FALSE, quote = FALSE)

relmat_fit <- function(formula, data, reml) {
  t0 <- proc.time()[["elapsed"]]
  lf <- lFormula(formula, data, REML = reml,
                 control = lmerControl(check.nobs.vs.nlev = "ignore",
                                       check.nobs.vs.nRE = "ignore"))
  k <- which(names(lf$reTrms$cnms) == "animal")
  rows <- (lf$reTrms$Gp[k] + 1):lf$reTrms$Gp[k + 1]
  levels <- levels(lf$reTrms$flist[["animal"]])
  L <- t(chol(A[levels, levels]))
  Zt <- lf$reTrms$Zt
  others <- setdiff(seq_len(nrow(Zt)), rows)
  # rbind, not Zt[rows, ] <- ...: sub-assigning a dense block into a sparse matrix is
  # very slow in Matrix. Rows keep lme4's order (the animal term's block in place).
  blocks <- list(before = others[others < min(rows)], after = others[others > max(rows)])
  Zt <- rbind(Zt[blocks$before, , drop = FALSE],
              as(t(L) %*% Zt[rows, , drop = FALSE], "CsparseMatrix"),
              Zt[blocks$after, , drop = FALSE])
  lf$reTrms$Zt <- as(Zt, "CsparseMatrix")
  message("Zt built ", proc.time()[["elapsed"]] - t0)
  devfun <- do.call(mkLmerDevfun, lf)
  opt <- optimizeLmer(devfun, control = list(xtol_abs = 1e-10, ftol_abs = 1e-12))
  message("optimized ", proc.time()[["elapsed"]] - t0)
  fit <- mkMerMod(environment(devfun), opt, lf$reTrms, fr = lf$fr)
  seconds <- proc.time()[["elapsed"]] - t0
  u <- ranef(fit, condVar = FALSE)[["animal"]][, 1]
  vc <- as.data.frame(VarCorr(fit))
  list(formula = deparse(formula), reml = reml,
       minus2loglik = if (reml) unname(REMLcrit(fit)) else -2 * as.numeric(logLik(fit)),
       fixef_names = arr(names(fixef(fit))), fixef = arr(unname(fixef(fit))),
       sd_animal = vc$sdcor[vc$grp == "animal"][1], sd_herd = vc$sdcor[vc$grp == "herd"][1],
       sigma = sigma(fit), b_levels = arr(levels), b = arr(unname(drop(L %*% u))),
       fit_seconds = seconds, a_seconds = a_seconds)
}

models <- list(
  herd_reml = relmat_fit(y ~ x + (1 | animal) + (1 | herd), records, TRUE),
  herd_ml = relmat_fit(y ~ x + (1 | animal) + (1 | herd), records, FALSE)
)
save_json(list(versions = list(R = R.version.string,
                               lme4 = as.character(packageVersion("lme4"))),
               models = models), "pedigree.json")
for (m in models) cat(sprintf("%-40s -2logL %.8f  sd %.6f %.6f  %.2fs\n", m$formula,
                              m$minus2loglik, m$sd_animal, m$sd_herd, m$fit_seconds))
