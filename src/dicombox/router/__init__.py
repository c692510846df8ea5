"""The router: receives from modalities, spools durably, forwards by rules."""
