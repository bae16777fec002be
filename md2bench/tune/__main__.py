"""A tuning worker process: ``python -m md2bench.tune SPEC.json`` (started by ``run_study``, one per GPU)."""

import sys

from md2bench.tune.worker import main

sys.exit(main(sys.argv[1:]))
