"""Baselines from the CLIP seed (filled in below). FAMILIES maps class name -> (model, config)."""

FAMILIES: dict = {}
