"""Markdown table comparing runs from their run dirs, seeds pooled: mean and spread over seeds.

    python -m nlp_adagrad.train -m optim=adagrad,sgd trainer.seed=0,1,2
    python scripts/compare_runs.py outputs/multirun/<date>/<time>

The table is nlp_adagrad.compare's (its docstring says how groups and numbers are made).
"""

import sys

from nlp_adagrad.compare import main

if __name__ == "__main__":
    sys.exit(main())
