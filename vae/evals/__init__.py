"""Evaluation: the one evaluator (``evaluator``: parameters and a dataset
in, per-example bounds and summary metrics out) that training's per-epoch
test metrics, ``scripts/evaluate.py`` and the figures all call, and a run
directory evaluated into ``eval.json`` with the table of several runs
(``evaluate``). May import the foundations, ``vae.model``, ``vae.data`` and
``vae.store``; nothing that trains or draws.
"""
