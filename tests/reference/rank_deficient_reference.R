# rank_deficient_reference.R -- lme4 on fixed-effect model matrices that are rank deficient.
#
# Produces: rank_deficient.json (next to this script).
# Run:      cd tests/reference && Rscript rank_deficient_reference.R     (a few seconds)
#
# lme4's default (check.rankX = "message+drop.cols") drops the aliased columns found by
# qr(X, tol = 1e-7) (LINPACK dqrdc2: later columns of a collinear set go), says
# "fixed-effect model matrix is rank deficient so dropping N column(s) / coefficient(s)",
# and fits the rest. fixef(fit, add.dropped = TRUE) reports the dropped ones as NA.
#
# Models:
#   lmer:  sleepstudy with Days2 = 2 * Days and week = Days + 3 (both aliased),
#          Reaction ~ Days + Days2 + week + (Days | Subject), REML.
#   glmer: cbpp with late = 1 when period is 3 or 4 (period3 + period4 = late),
#          cbind(incidence, size - incidence) ~ period + late + (1 | herd), Laplace.
#
# Layout: {"versions", "models": {name: {"formula", "dataset", "dropped": [names],
# "message", "fixef_all": {name: value or null}, "se": {kept name: value}, "theta",
# "criterion" (REML criterion, or -2 logLik), "vcov_dim"}}}.

suppressPackageStartupMessages({
  library(lme4)
  library(jsonlite)
})
source("json_helpers.R")

capture_message <- function(expr) {
  msg <- NULL
  value <- withCallingHandlers(expr, message = function(m) {
    msg <<- c(msg, conditionMessage(m))
    invokeRestart("muffleMessage")
  })
  list(value = value, message = paste(trimws(msg), collapse = "\n"))
}

summarise <- function(fit, formula, dataset, message) {
  all <- fixef(fit, add.dropped = TRUE)
  kept <- fixef(fit)
  list(
    formula = formula,
    dataset = dataset,
    dropped = arr(setdiff(names(all), names(kept))),
    message = message,
    fixef_all = as.list(all),
    se = as.list(setNames(sqrt(diag(as.matrix(vcov(fit)))), names(kept))),
    theta = arr(getME(fit, "theta")),
    criterion = if (isREML(fit)) unname(REMLcrit(fit)) else -2 * as.numeric(logLik(fit)),
    vcov_dim = arr(dim(vcov(fit)))
  )
}

sleep <- sleepstudy
sleep$Days2 <- 2 * sleep$Days
sleep$week <- sleep$Days + 3
f1 <- "Reaction ~ Days + Days2 + week + (Days | Subject)"
r1 <- capture_message(lmer(as.formula(f1), sleep, REML = TRUE))

cb <- cbpp
cb$late <- as.numeric(cb$period %in% c("3", "4"))
f2 <- "cbind(incidence, size - incidence) ~ period + late + (1 | herd)"
r2 <- capture_message(glmer(as.formula(f2), cb, family = binomial))

out <- list(
  versions = list(R = R.version.string, lme4 = as.character(packageVersion("lme4"))),
  models = list(
    lmer_sleepstudy = summarise(r1$value, f1, "sleepstudy (+ Days2 = 2 Days, week = Days + 3)", r1$message),
    glmer_cbpp = summarise(r2$value, f2, "cbpp (+ late = period in 3, 4)", r2$message)
  )
)
save_json(out, "rank_deficient.json")
