# R's number formats for glmmjax's summaries (tests/test_display.py):
# format.pval(p, digits = 3) as printCoefmat uses it, and format(x, digits = 5).
# Run from the repository root: Rscript tests/reference/display_reference.R
library(jsonlite)
pvals <- list(
  c(1e-20, 0.0012345, 1.789e-9, 0.5, 0.000218),
  c(0.5, 0.0012345),
  c(1e-20),
  c(1e-20, 0.5),
  c(0.12345, 1),
  c(5.9e-5, 3.19e-5, 1.6e-5, 1e-20),
  c(0.04, 0.3, 0.9999),
  c(2e-5, 0.7)
)
columns <- list(
  c(251.4051, 10.4673),
  c(6.8246, 1.5458),
  c(-1.269023, -1.170763, -1.301405),
  c(1e-9, 2.5e-7),
  c(123456789.0, 1.5),
  c(0, 1, 2),
  c(-0.000123456, 12.5)
)
out <- list(
  pval = lapply(pvals, function(p) list(p = p, text = format.pval(p, digits = 3))),
  format = lapply(columns, function(x) list(x = x, text = trimws(format(x, digits = 5))))
)
write_json(out, "tests/reference/display.json", digits = NA, auto_unbox = FALSE, pretty = TRUE)
