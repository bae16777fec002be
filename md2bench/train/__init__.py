"""Training of one run: the run-folder contract (``rundir``, torch-free) and, in the modules beside it, ``fit``."""
