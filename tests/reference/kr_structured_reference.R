# kr_structured_reference.R -- Kenward-Roger and Satterthwaite references for glmmjax's
# structured covariance terms, through lmer models that express the same covariance.
#
# Produces: kr_structured.json and data/kr_cs.csv (next to this script).
# Run:      cd tests/reference && Rscript kr_structured_reference.R      (seconds)
#
# pbkrtest (and lmerTest) work on lmer fits only, so each structured glmmjax model is
# checked against the lmer model with the same marginal covariance:
#   diag(1 + Days | Subject)   ==  (1 | Subject) + (0 + Days | Subject)     (sleepstudy)
#   homcs(0 + cond | subj)     ==  (1 | subj) + (1 | subj:cond)             (simulated;
#       Sigma_t = a I + c 11' with c = sd_subj^2, a = sd_subj:cond^2, rho >= 0)
# Both are linear in pbkrtest's parameters (the variances), as glmmjax's KR
# parameterizes diag and homcs. The coefficient tables come from lmerTest's summary
# with ddf = "Kenward-Roger" (pbkrtest's vcovAdj and Lb_ddf) and "Satterthwaite", and
# the type III F tests from lmerTest's anova.
#
# Layout: {"versions": {...}, "models": {name: {data, formula_glmmjax, formula_lmer,
# reml_criterion, kr: {estimate, se, df}, satterthwaite: {se, df}, anova_kr:
# {term, F, NumDF, DenDF}, coef_names}}}.

suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
  library(pbkrtest)
  library(jsonlite)
})
source("json_helpers.R")

set.seed(1701)
subj <- sprintf("s%02d", 1:14)
cond <- c("c1", "c2", "c3", "c4")
grid <- expand.grid(rep = 1:3, cond = cond, subj = subj, stringsAsFactors = FALSE)
grid <- grid[-sample(nrow(grid), 20), ]  # unbalanced
u <- setNames(rnorm(length(subj), sd = 0.8), subj)
v <- rnorm(length(subj) * 4, sd = 0.5)
names(v) <- paste(rep(subj, each = 4), cond, sep = ":")
x <- round(rnorm(nrow(grid)), 6)
mu <- c(c1 = 1, c2 = 1.4, c3 = 0.7, c4 = 1.1)[grid$cond]
y <- round(mu + 0.3 * x + u[grid$subj] + v[paste(grid$subj, grid$cond, sep = ":")] +
             rnorm(nrow(grid), sd = 0.6), 6)
cs_data <- data.frame(y = y, x = x, cond = grid$cond, subj = grid$subj)
write.csv(data.frame(y = num2str(y), x = num2str(x), cond = cs_data$cond, subj = cs_data$subj),
          "data/kr_cs.csv", row.names = FALSE, quote = FALSE)

sleep <- lme4::sleepstudy

record <- function(data_name, data, glmmjax_formula, lmer_formula) {
  fit <- lmerTest::lmer(as.formula(lmer_formula), data, REML = TRUE,
                        control = lmerControl(optCtrl = list(xtol_abs = 1e-10, ftol_abs = 1e-12)))
  kr <- coef(summary(fit, ddf = "Kenward-Roger"))
  sat <- coef(summary(fit, ddf = "Satterthwaite"))
  an <- anova(fit, ddf = "Kenward-Roger")
  list(data = data_name, formula_glmmjax = glmmjax_formula, formula_lmer = lmer_formula,
       reml_criterion = unname(REMLcrit(fit)), coef_names = arr(rownames(kr)),
       kr = list(estimate = arr(kr[, "Estimate"]), se = arr(kr[, "Std. Error"]),
                 df = arr(kr[, "df"])),
       satterthwaite = list(se = arr(sat[, "Std. Error"]), df = arr(sat[, "df"])),
       anova_kr = list(term = arr(rownames(an)), F = arr(an[, "F value"]),
                       NumDF = arr(an[, "NumDF"]), DenDF = arr(an[, "DenDF"])))
}

models <- list(
  diag_sleepstudy = record("sleepstudy", sleep, "Reaction ~ Days + diag(1 + Days | Subject)",
                           "Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)"),
  homcs_simulated = record("kr_cs.csv", cs_data, "y ~ x + cond + homcs(0 + cond | subj)",
                           "y ~ x + cond + (1 | subj) + (1 | subj:cond)")
)
save_json(list(versions = list(R = R.version.string,
                               lme4 = as.character(packageVersion("lme4")),
                               lmerTest = as.character(packageVersion("lmerTest")),
                               pbkrtest = as.character(packageVersion("pbkrtest"))),
               models = models), "kr_structured.json")
for (m in models) { cat(m$formula_lmer, "\n"); print(unlist(m$kr$df)) }
