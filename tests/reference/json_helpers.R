# json_helpers.R -- helpers shared by the reference scripts in this folder.
#
# Sourced (from this folder) by glm_, glmm_, lmm_, inference_ and bootstrap_reference.R.
# Numbers are written with the fewest of 15-17 significant digits that read back to the
# same double, so the JSON carries full double precision; arr() marks a value that must
# stay a JSON array even with length one.

suppressPackageStartupMessages(library(jsonlite))

num2str <- function(v) {
  v <- as.vector(v)
  out <- sprintf("%.15g", v)
  for (d in c(16, 17)) {
    bad <- is.finite(v) & suppressWarnings(as.numeric(out)) != v
    bad[is.na(bad)] <- FALSE
    out[bad] <- sprintf(paste0("%.", d, "g"), v[bad])
  }
  out[!is.finite(v)] <- "null"
  out
}
prep <- function(x) {
  if (is.list(x)) {
    r <- lapply(x, prep)
    names(r) <- names(x)
    if (inherits(x, "AsIs")) class(r) <- "AsIs"
    return(r)
  }
  if (is.double(x)) {
    s <- num2str(x)
    txt <- if (length(x) == 1 && !inherits(x, "AsIs")) s else paste0("[", paste(s, collapse = ","), "]")
    return(structure(txt, class = "json"))
  }
  if (is.factor(x)) x <- as.character(x)
  x
}
save_json <- function(x, file) {
  write_json(prep(x), file, auto_unbox = TRUE, digits = NA, pretty = TRUE,
             json_verbatim = TRUE, na = "null", null = "null")
}
arr <- function(x) I(unname(if (is.factor(x)) as.character(x) else x))
rows <- function(m) { m <- as.matrix(m); lapply(seq_len(nrow(m)), function(i) arr(as.numeric(m[i, ]))) }

# Write a data frame as CSV with round-trip precision and read it back.
write_data <- function(df, name) {
  dir.create("data", showWarnings = FALSE)
  path <- file.path("data", name)
  out <- df
  for (nm in names(out)) {
    if (is.double(out[[nm]])) out[[nm]] <- num2str(out[[nm]])
    else out[[nm]] <- as.character(out[[nm]])
  }
  write.csv(out, path, row.names = FALSE, quote = FALSE)
  back <- read.csv(path, stringsAsFactors = TRUE)
  for (nm in names(df)) if (is.double(df[[nm]])) stopifnot(all(as.numeric(back[[nm]]) == df[[nm]]))
  list(path = path, data = back)
}

