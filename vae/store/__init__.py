"""Run and sweep directories: the layout and every file name, atomic writes,
locks, ``metrics.jsonl``, saved configs read back, provenance, Orbax
checkpoints with their integrity record, and runs read back (parameters
without an optimizer), compared and checked against references. May import
the foundations and ``vae.model`` (to build the model a saved config
describes); nothing that trains, evaluates or draws.
"""
