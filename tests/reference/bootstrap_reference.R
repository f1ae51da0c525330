# bootstrap_reference.R -- parametric bootstrap reference (lme4::bootMer).
#
# Produces: bootstrap.json and data/bootstrap_replicates.csv (next to this script).
# Run:      cd tests/reference && Rscript bootstrap_reference.R     (about a minute)
#
# Model: lmer(Reaction ~ Days + (Days | Subject), sleepstudy, REML = TRUE);
# bootMer(fit, FUN, nsim = 500, seed = 101, type = "parametric", use.u = FALSE),
# i.e. new responses are simulated from the fitted model with new random effects and
# the model is refitted to each.  FUN returns the fixed effects, sigma, the two
# random-effect SDs and their correlation.
#
# A Python port cannot reproduce R's random numbers, so tests should compare
# distributional summaries with a Monte Carlo tolerance: "mean", "sd", "q025",
# "q975" (quantile type 7) per statistic, next to "t0" (the statistic on the data).
# The individual replicates are in data/bootstrap_replicates.csv (one row per
# replicate, columns = statistic names) for checking summary computations exactly.
#
# Layout: {"versions", "model": {formula, dataset, reml}, "settings": {nsim, seed,
# type, use_u}, "statistics": [names], "t0", "mean", "sd", "q025", "q975",
# "n_replicates" (non-NA replicates), "n_failed", "n_singular" (refits reported singular), "fit_seconds", "warnings",
# "messages",
# "replicates_csv"}.  "t0" ... "q975" are objects keyed by statistic name.

suppressPackageStartupMessages({
  library(lme4)
  library(jsonlite)
})

## ---- JSON / CSV helpers (full double precision): shared ---------------------
source("json_helpers.R")

## ---- bootstrap -------------------------------------------------------------------
fit <- lmer(Reaction ~ Days + (Days | Subject), sleepstudy, REML = TRUE)

stat_fun <- function(m) {
  vc <- as.data.frame(VarCorr(m))
  sd_int <- vc$sdcor[vc$grp == "Subject" & vc$var1 == "(Intercept)" & is.na(vc$var2)]
  sd_days <- vc$sdcor[vc$grp == "Subject" & vc$var1 == "Days" & is.na(vc$var2)]
  cor_id <- vc$sdcor[vc$grp == "Subject" & !is.na(vc$var2)]
  c(fixef(m), sigma = sigma(m), "sd_(Intercept)|Subject" = sd_int,
    "sd_Days|Subject" = sd_days, "cor_Days.(Intercept)|Subject" = cor_id)
}

nsim <- 500
warns <- character()
msgs <- character()
t0 <- proc.time()[["elapsed"]]
bt <- withCallingHandlers(
  bootMer(fit, stat_fun, nsim = nsim, seed = 101, type = "parametric", use.u = FALSE),
  warning = function(w) { warns <<- c(warns, conditionMessage(w)); invokeRestart("muffleWarning") },
  message = function(m) { msgs <<- c(msgs, conditionMessage(m)); invokeRestart("muffleMessage") })
fit_seconds <- proc.time()[["elapsed"]] - t0

reps <- bt$t
stats <- colnames(reps)
ok <- stats::complete.cases(reps)
summ <- function(f) as.list(setNames(apply(reps[ok, , drop = FALSE], 2, f), stats))

# Replicates to CSV with round-trip precision.
dir.create("data", showWarnings = FALSE)
csv <- file.path("data", "bootstrap_replicates.csv")
out <- as.data.frame(lapply(as.data.frame(reps), num2str), check.names = FALSE)
write.csv(out, csv, row.names = FALSE, quote = FALSE)

res <- list(
  versions = list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                  Matrix = as.character(packageVersion("Matrix")),
                  jsonlite = as.character(packageVersion("jsonlite"))),
  model = list(formula = "Reaction ~ Days + (Days | Subject)", dataset = "sleepstudy", reml = TRUE),
  settings = list(nsim = nsim, seed = 101, type = "parametric", use_u = FALSE,
                  quantile_type = 7),
  statistics = arr(stats),
  t0 = as.list(setNames(as.numeric(bt$t0), stats)),
  mean = summ(mean),
  sd = summ(sd),
  q025 = summ(function(x) quantile(x, 0.025, names = FALSE)),
  q975 = summ(function(x) quantile(x, 0.975, names = FALSE)),
  n_replicates = sum(ok),
  n_failed = nsim - sum(ok),
  n_singular = sum(grepl("singular", c(warns, msgs))),
  fit_seconds = fit_seconds,
  warnings = arr(unique(warns)),
  messages = arr(unique(trimws(msgs))),
  replicates_csv = csv
)

print(rbind(t0 = unlist(res$t0), mean = unlist(res$mean), sd = unlist(res$sd),
            q025 = unlist(res$q025), q975 = unlist(res$q975)))
cat(sprintf("replicates: %d ok, %d failed; %.1f s; %d warnings\n",
            res$n_replicates, res$n_failed, fit_seconds, length(warns)))
save_json(res, "bootstrap.json")
cat("wrote bootstrap.json\n")
