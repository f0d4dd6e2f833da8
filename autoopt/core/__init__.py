"""autoopt's torch-free floor: the trial record, the task traits and the optimizer catalog.

Everything here imports without torch, Ray or MLflow, so the CLI's read-only commands and the
recommender stay fast, and every other module shares one definition of each.
"""
