"""Pictures and event files: the arrays a picture shows (``images``: tiles,
likelihood means, latent grids, projections; no matplotlib), the figure
functions (``plots``: arrays or parameters in, one PNG and the drawn
arrays out), the figures of a run directory (``figures``) and the optional
TensorBoard event files (``tensorboard``). Every number a figure shows
comes from the evaluator or from ``metrics.jsonl``. May import the
foundations, ``vae.model``, ``vae.data``, ``vae.store`` and ``vae.evals``;
nothing that trains.
"""
