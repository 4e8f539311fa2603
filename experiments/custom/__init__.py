"""The custom-class recipe: one config for every detector family (train.py, evaluate.py, recipe.py)."""
