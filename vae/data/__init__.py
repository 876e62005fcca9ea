"""Datasets, and images as training sees them: every dataset source and
file format behind one loader (the embedded mnist_5k digits, TFDS without
TensorFlow, raw IDX/AMAT files, external ``.npy``/``.npz``/IDX images), the
one dataset cache of a process and binarisation (static, dynamic, and the
test set's fixed draw). Arrays out, no models. May import only the
foundations (``vae.errors``, ``vae.rng``, ``vae.config``).
"""
