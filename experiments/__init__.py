"""Experiment configs and entry scripts; ``experiments.custom`` is the recipe package."""
import lib  # noqa: F401  (first: it sets the OpenMP threads before libmxnet loads, see lib.runtime)
