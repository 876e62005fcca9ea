"""What a VAE is, in pure JAX: the likelihoods p(x | z), the networks (and
the member-count-independent dense layer they are built from), the public
functions ``encode``/``sample``/``decode``/``reconstruct``/``elbo``, the
k-sample bound of a batch with the one home of its log-weights, and the
diagnostics of a latent space (active units, KL per dimension, mutual
information, collapse). No files, no datasets, no training loop: parameters
and keys in, arrays out. May import only the foundations (``vae.errors``,
``vae.rng``, ``vae.config`` for the names of its options).
"""
