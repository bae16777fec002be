"""Training of one run: the run-folder contract (``rundir``, torch-free) and, in the modules beside it, ``fit``.

Import the submodules directly (this package imports none of them, so ``md2bench.train.rundir`` stays
torch-free): ``loop`` (``fit``, ``RunResult``), ``state`` (seeding, RNG, data order, schedule, checkpoint dict),
``step`` (``train_step``, divergence errors), ``validate``, ``device`` (device, autocast, model preparation,
optimiser) and ``lifecycle`` (log file, signals, parent watch, the MLflow run's claim and end).
"""
