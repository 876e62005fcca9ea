"""Training: the state (``state``), the optimizer (``optim``), the objectives
and KL schedules with the metrics of an epoch (``objectives``), one step and
one scanned epoch (``step``), device placement (``devices``), the compiled
program of a group of members (``program``), the run loop as that program
plus actions called on a schedule (``loop``, ``actions``), and every
benchmark of them (``bench``). May import the foundations, ``vae.model``,
``vae.data``, ``vae.store``, ``vae.evals`` (the per-epoch test metrics are
the evaluator's) and ``vae.viz`` (TensorBoard events); not the sweeps above.
"""
