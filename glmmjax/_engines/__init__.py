"""The fitting engines and the seam that chooses one (see ``seam``)."""
