# lmm_reference.R -- reference values for linear mixed models (lme4::lmer).
#
# Produces: lmm.json (next to this script).
# Run:      cd tests/reference && Rscript lmm_reference.R
#
# Datasets are lme4's own (sleepstudy, Dyestuff, Dyestuff2, Penicillin, Pastes,
# InstEval); glmmjax bundles identical copies (glmmjax/data/*.csv), referred to by
# the lower-case "dataset" name recorded with each model.
#
# Layout: {"versions": {...}, "models": {name: {...}}}.  Per model: name, dataset,
# formula, reml, fixef_names, fixef, fixef_se, vcov (list of rows), theta,
# theta_names, sigma, varcorr (rows of as.data.frame(VarCorr(fit))), objective
# (REMLcrit for REML fits, deviance for ML, i.e. -2*logLik), loglik, aic, bic, df,
# nobs, ngroups, singular, ranef (all but insteval), fitted_head, resid_head and,
# for the sleepstudy models, predict_newdata; insteval also records fit_seconds.
#
# Numbers are written with the shortest decimal representation that round-trips
# to the same double (jsonlite itself stops at 15 significant digits).

suppressPackageStartupMessages({
  library(lme4)
  library(jsonlite)
})

## ---- JSON / CSV helpers (full double precision): shared ---------------------
source("json_helpers.R")
na2null <- function(x) if (is.na(x)) NULL else x

## ---- extraction ---------------------------------------------------------------
ranef_info <- function(fit) {
  re <- ranef(fit, condVar = TRUE)
  cs <- as.data.frame(re)    # grpvar, term, grp, condval, condsd
  out <- list()
  for (g in names(re)) {
    vals <- as.matrix(re[[g]])
    sub <- cs[cs$grpvar == g, ]
    sds <- sapply(colnames(vals), function(tm) {
      s <- sub[sub$term == tm, ]
      s$condsd[match(rownames(vals), as.character(s$grp))]
    })
    sds <- matrix(sds, nrow = nrow(vals))
    out[[g]] <- list(levels = arr(rownames(vals)), columns = arr(colnames(vals)),
                     values = rows(vals), condsd = rows(sds))
  }
  out
}

varcorr_rows <- function(fit) {
  vc <- as.data.frame(VarCorr(fit))
  lapply(seq_len(nrow(vc)), function(i) list(
    grp = vc$grp[i], var1 = na2null(vc$var1[i]), var2 = na2null(vc$var2[i]),
    vcov = vc$vcov[i], sdcor = vc$sdcor[i]))
}

describe <- function(name, dataset, fit, with_ranef = TRUE, newdata = NULL) {
  ll <- logLik(fit)
  reml <- isREML(fit)
  th <- getME(fit, "theta")
  V <- as.matrix(vcov(fit))
  res <- list(
    name = name,
    dataset = dataset,
    formula = paste(deparse(formula(fit), width.cutoff = 500L), collapse = " "),
    reml = reml,
    fixef_names = arr(names(fixef(fit))),
    fixef = arr(unname(fixef(fit))),
    fixef_se = arr(sqrt(diag(V))),
    vcov = rows(V),
    theta = arr(unname(th)),
    theta_names = arr(names(th)),
    sigma = sigma(fit),
    varcorr = varcorr_rows(fit),
    objective = if (reml) unname(REMLcrit(fit)) else unname(deviance(fit)),
    loglik = as.numeric(ll),
    aic = AIC(fit),
    bic = BIC(fit),
    df = attr(ll, "df"),
    nobs = nobs(fit),
    ngroups = as.list(ngrps(fit)),
    singular = isSingular(fit),
    fitted_head = arr(unname(head(fitted(fit), 10))),
    resid_head = arr(unname(head(residuals(fit), 10)))
  )
  stopifnot(isTRUE(all.equal(res$objective, -2 * res$loglik)))
  if (with_ranef) res$ranef <- ranef_info(fit)
  if (!is.null(newdata)) {
    res$predict_newdata <- list(
      newdata = list(Days = arr(newdata$Days), Subject = arr(as.character(newdata$Subject))),
      with_re = arr(unname(predict(fit, newdata = newdata, re.form = NULL, allow.new.levels = TRUE))),
      fixed_only = arr(unname(predict(fit, newdata = newdata, re.form = NA))))
  }
  res
}

## ---- fits -----------------------------------------------------------------------
sleep_new <- data.frame(Days = c(0, 5, 9, 2), Subject = c("308", "309", "372", "NEW"))

models <- list()
add <- function(name, dataset, fit, ...) {
  cat(sprintf("%-24s objective = %.10f  singular = %s\n", name,
              if (isREML(fit)) REMLcrit(fit) else deviance(fit), isSingular(fit)))
  models[[name]] <<- describe(name, dataset, fit, ...)
}

add("sleepstudy_reml", "sleepstudy",
    lmer(Reaction ~ Days + (Days | Subject), sleepstudy, REML = TRUE), newdata = sleep_new)
add("sleepstudy_ml", "sleepstudy",
    lmer(Reaction ~ Days + (Days | Subject), sleepstudy, REML = FALSE), newdata = sleep_new)
add("sleepstudy_uncorr_reml", "sleepstudy",
    lmer(Reaction ~ Days + (Days || Subject), sleepstudy, REML = TRUE), newdata = sleep_new)
add("dyestuff_reml", "dyestuff", lmer(Yield ~ 1 + (1 | Batch), Dyestuff, REML = TRUE))
add("dyestuff_ml", "dyestuff", lmer(Yield ~ 1 + (1 | Batch), Dyestuff, REML = FALSE))
add("dyestuff2_reml", "dyestuff2", lmer(Yield ~ 1 + (1 | Batch), Dyestuff2, REML = TRUE))
add("penicillin_reml", "penicillin",
    lmer(diameter ~ 1 + (1 | plate) + (1 | sample), Penicillin, REML = TRUE))
add("pastes_reml", "pastes", lmer(strength ~ 1 + (1 | batch / cask), Pastes, REML = TRUE))

t0 <- proc.time()[["elapsed"]]
fit_ie <- lmer(y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept:service), InstEval, REML = TRUE)
fit_seconds <- proc.time()[["elapsed"]] - t0
add("insteval_reml", "insteval", fit_ie, with_ranef = FALSE)
models$insteval_reml$fit_seconds <- fit_seconds
cat(sprintf("insteval fit time: %.2f s\n", fit_seconds))

versions <- list(
  R = R.version.string,
  lme4 = as.character(packageVersion("lme4")),
  Matrix = as.character(packageVersion("Matrix")),
  jsonlite = as.character(packageVersion("jsonlite")),
  optimizer_note = "lmer defaults: nloptwrap (BOBYQA) for LMMs"
)

save_json(list(versions = versions, models = models), "lmm.json")
cat("wrote lmm.json\n")
