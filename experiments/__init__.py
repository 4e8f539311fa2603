"""Experiment configs and entry scripts; ``experiments.custom`` is the recipe package."""
