"""Applications: the ``captum-sfam`` command line (``cli``) and the benchmark
with ground truth (``bench``). They need the ``demo`` and ``eval`` extras."""
