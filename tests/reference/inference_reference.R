# inference_reference.R -- reference values for inference on mixed models:
# Satterthwaite and Kenward-Roger t and F tests (lmerTest, pbkrtest), a likelihood
# ratio test (lme4's anova), and profile / Wald confidence intervals (lme4 confint).
# The parametric bootstrap lives in bootstrap_reference.R.
#
# Produces: inference.json and data/sleepstudy_unbalanced.csv (next to this script).
# Run:      cd tests/reference && Rscript inference_reference.R     (about a minute)
#
# Layout: {"versions", "ddf_models", "lrt", "confint"}.
#  ddf_models: {name: {name, dataset | data, formula, reml, fixef_names,
#      coef_satterthwaite, coef_kenward_roger   (each {names, estimate, se, df, t, p}),
#      anova_satterthwaite, anova_kenward_roger (type III; each {terms, sum_sq,
#                                                mean_sq, NumDF, DenDF, F, p}),
#      vcov (unadjusted), vcov_kr (pbkrtest::vcovAdj), objective (REML criterion)}}
#  lrt: {m0_formula, m1_formula, refit_ml, models, npar, AIC, BIC, logLik, deviance,
#        Chisq, Df, p}  (columns are arrays over the two models, m0 first; the first
#        model's Chisq, Df and p are null)
#  confint: {name: {formula, fit, profile: {names, lower, upper, level},
#        wald: {names, lower, upper, level}}}  (names as with oldNames = FALSE,
#        e.g. "sd_(Intercept)|Subject", "cor_Days.(Intercept)|Subject", "sigma")
#
# The "unbalanced" data set: sleepstudy with a random 30% of rows dropped
# (set.seed(1)) and a between-subject factor grp = "g" + (as.integer(Subject) %% 3),
# where as.integer(Subject) is the level index in lme4's level order.

suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
  library(pbkrtest)
  library(jsonlite)
})

## ---- JSON / CSV helpers (full double precision): shared ---------------------
source("json_helpers.R")

## ---- tables --------------------------------------------------------------------
coef_table <- function(fit, ddf) {
  ct <- summary(fit, ddf = ddf)$coefficients
  list(names = arr(rownames(ct)), estimate = arr(ct[, "Estimate"]), se = arr(ct[, "Std. Error"]),
       df = arr(ct[, "df"]), t = arr(ct[, "t value"]), p = arr(ct[, "Pr(>|t|)"]))
}
anova_table <- function(fit, ddf) {
  a <- anova(fit, type = 3, ddf = ddf)
  list(type = 3, terms = arr(as.character(rownames(a))),
       sum_sq = arr(as.numeric(a[["Sum Sq"]])), mean_sq = arr(as.numeric(a[["Mean Sq"]])),
       NumDF = arr(as.numeric(a[["NumDF"]])), DenDF = arr(as.numeric(a[["DenDF"]])),
       F = arr(as.numeric(a[["F value"]])), p = arr(as.numeric(a[["Pr(>F)"]])))
}

ddf_models <- list()
add_ddf <- function(name, fit, source) {
  V <- as.matrix(vcov(fit))
  m <- c(list(name = name), source, list(
    formula = paste(deparse(formula(fit), width.cutoff = 500L), collapse = " "),
    reml = isREML(fit),
    objective = unname(REMLcrit(fit)),
    fixef_names = arr(names(fixef(fit))),
    coef_satterthwaite = coef_table(fit, "Satterthwaite"),
    coef_kenward_roger = coef_table(fit, "Kenward-Roger"),
    anova_satterthwaite = anova_table(fit, "Satterthwaite"),
    anova_kenward_roger = anova_table(fit, "Kenward-Roger"),
    vcov = rows(V),
    vcov_kr = rows(as.matrix(vcovAdj(as(fit, "lmerMod"))))
  ))
  cat(sprintf("%-22s REML = %.8f  Satterthwaite df = %s  KR df = %s\n", name, m$objective,
              paste(format(m$coef_satterthwaite$df, digits = 8), collapse = ", "),
              paste(format(m$coef_kenward_roger$df, digits = 8), collapse = ", ")))
  ddf_models[[name]] <<- m
}

## ---- Satterthwaite / Kenward-Roger -------------------------------------------
add_ddf("sleepstudy", lmerTest::lmer(Reaction ~ Days + (Days | Subject), sleepstudy),
        list(dataset = "sleepstudy", data = NULL))
add_ddf("penicillin", lmerTest::lmer(diameter ~ 1 + (1 | plate) + (1 | sample), Penicillin),
        list(dataset = "penicillin", data = NULL))

set.seed(1)
keep <- sort(sample(nrow(sleepstudy), round(0.7 * nrow(sleepstudy))))
unb <- sleepstudy[keep, c("Reaction", "Days", "Subject")]
unb$grp <- paste0("g", as.integer(unb$Subject) %% 3)
unb$Subject <- as.character(unb$Subject)
rownames(unb) <- NULL
dd <- write_data(unb, "sleepstudy_unbalanced.csv")
dd$data$Subject <- factor(dd$data$Subject)
add_ddf("sleepstudy_unbalanced",
        lmerTest::lmer(Reaction ~ Days + grp + (Days | Subject), dd$data),
        list(dataset = NULL, data = dd$path,
             data_note = paste("sleepstudy rows kept after set.seed(1); sample(180, 126);",
                               "grp = 'g' + (Subject level index %% 3); Subject read as a string")))

## ---- likelihood ratio test (lme4 anova, refits by ML) --------------------------
m0 <- lme4::lmer(Reaction ~ Days + (1 | Subject), sleepstudy)
m1 <- lme4::lmer(Reaction ~ Days + (Days | Subject), sleepstudy)
a <- suppressMessages(anova(m0, m1))   # m0, m1 are lme4 fits: lme4::anova.merMod
lrt <- list(
  m0_formula = "Reaction ~ Days + (1 | Subject)",
  m1_formula = "Reaction ~ Days + (Days | Subject)",
  dataset = "sleepstudy",
  refit_ml = TRUE,
  models = arr(rownames(a)),
  npar = arr(as.numeric(a$npar)), AIC = arr(a$AIC), BIC = arr(a$BIC),
  logLik = arr(a$logLik), deviance = arr(a$deviance), Chisq = arr(a$Chisq),
  Df = arr(as.numeric(a$Df)), p = arr(a[["Pr(>Chisq)"]]))
cat(sprintf("LRT: Chisq = %.8f on %d df, p = %.6g\n", a$Chisq[2], a$Df[2], a[["Pr(>Chisq)"]][2]))

## ---- confidence intervals ------------------------------------------------------
ci_list <- function(ci, level = 0.95) {
  list(names = arr(rownames(ci)), lower = arr(unname(ci[, 1])), upper = arr(unname(ci[, 2])),
       level = level)
}
confints <- list()
fit_ss <- lme4::lmer(Reaction ~ Days + (Days | Subject), sleepstudy, REML = TRUE)
warns <- character()
ci_prof <- withCallingHandlers(confint(fit_ss, method = "profile", oldNames = FALSE),
                               warning = function(w) { warns <<- c(warns, conditionMessage(w)); invokeRestart("muffleWarning") })
confints$sleepstudy_reml <- list(
  formula = "Reaction ~ Days + (Days | Subject)", dataset = "sleepstudy", fit = "lmer, REML",
  profile = ci_list(ci_prof),
  wald = ci_list(confint(fit_ss, method = "Wald", oldNames = FALSE)),
  profile_warnings = arr(warns))

fit_cbpp <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, family = binomial)
warns <- character()
ci_prof <- withCallingHandlers(confint(fit_cbpp, method = "profile", oldNames = FALSE),
                               warning = function(w) { warns <<- c(warns, conditionMessage(w)); invokeRestart("muffleWarning") })
confints$cbpp_laplace <- list(
  formula = "cbind(incidence, size - incidence) ~ period + (1 | herd)", dataset = "cbpp",
  fit = "glmer, binomial, Laplace",
  profile = ci_list(ci_prof),
  wald = ci_list(confint(fit_cbpp, method = "Wald", oldNames = FALSE)),
  profile_warnings = arr(warns))
for (nm in names(confints)) {
  cat(nm, "profile:\n"); print(cbind(confints[[nm]]$profile$lower, confints[[nm]]$profile$upper))
  for (w in confints[[nm]]$profile_warnings) cat("   warning:", w, "\n")
}

versions <- list(
  R = R.version.string,
  lme4 = as.character(packageVersion("lme4")),
  lmerTest = as.character(packageVersion("lmerTest")),
  pbkrtest = as.character(packageVersion("pbkrtest")),
  Matrix = as.character(packageVersion("Matrix")),
  jsonlite = as.character(packageVersion("jsonlite"))
)

save_json(list(versions = versions, ddf_models = ddf_models, lrt = lrt, confint = confints),
          "inference.json")
cat("wrote inference.json\n")
