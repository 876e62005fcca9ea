"""Sweeps, the top layer: the drivers that use every concept below.
A sweep config's members and which of them share a compiled program or a
curve (``grouping``), deterministic shards of them (``shards``), the runner
that trains them group by group (``runner``), cluster launch through
submitit (``launch``), the report read back from the member directories
(``report``: rows, table, CSV/JSON; it draws nothing) and the figures of a
sweep directory (``figures``). Like big_vision's trainers, it may import
every package; nothing in ``vae`` imports it.
"""
