# zero_inflated_example.R -- glmmTMB references for examples/zero_inflated_counts.py: the
# salamander counts of glmmTMB's own vignette (Brooks et al. 2017), one conditional model
# (count ~ spp + mined + (1 | site)) under five response models.
#
# Produces: zero_inflated_example.json (next to this script).
# Run:      cd tests/reference && Rscript zero_inflated_example.R     (a few seconds)
#
# Layout: {"versions": {...}, "formula": ..., "ziformula": ..., "models": {label: {...}}}
# with one entry per model of the example (its labels): family (glmmjax's name),
# zero_inflated (whether ziformula is used), aic, loglik, df, nobs, pdHess,
# fixef_cond_names, fixef_cond, fixef_zi_names, fixef_zi (empty without ziformula),
# sd_site (the conditional model's random-intercept SD).

suppressPackageStartupMessages(library(glmmTMB))
source("json_helpers.R")

data(Salamanders, package = "glmmTMB")
cond <- count ~ spp + mined + (1 | site)
zi <- ~spp + mined

describe <- function(tmb_family, glmmjax_family, ziformula) {
  fit <- glmmTMB(cond, data = Salamanders, family = tmb_family, ziformula = ziformula)
  ll <- logLik(fit)
  fe <- fixef(fit)
  list(family = glmmjax_family, zero_inflated = length(fe$zi) > 0,
       aic = AIC(fit), loglik = as.numeric(ll), df = attr(ll, "df"), nobs = nobs(fit),
       pdHess = fit$sdr$pdHess,
       fixef_cond_names = arr(names(fe$cond)), fixef_cond = arr(as.numeric(fe$cond)),
       fixef_zi_names = arr(as.character(names(fe$zi))), fixef_zi = arr(as.numeric(fe$zi)),
       sd_site = as.numeric(attr(VarCorr(fit)$cond$site, "stddev")))
}

models <- list(
  "Poisson" = describe(poisson, "poisson", ~0),
  "NB2" = describe(nbinom2, "nbinom2", ~0),
  "ZIP" = describe(poisson, "poisson", zi),
  "ZINB2" = describe(nbinom2, "nbinom2", zi),
  "hurdle NB2" = describe(truncated_nbinom2, "truncated_nbinom2", zi)
)

save_json(list(
  versions = list(R = R.version.string,
                  glmmTMB = as.character(packageVersion("glmmTMB"))),
  formula = paste(deparse(cond), collapse = " "),
  ziformula = paste(deparse(zi), collapse = " "),
  models = models), "zero_inflated_example.json")
