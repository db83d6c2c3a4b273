"""CLI: python -m pipeline.evaluate --model M ... --out metrics.json

Reads which task the model in ``--model`` serves (``pipeline.models.trained_task``) and hands
the whole command line to that task's evaluator (``pipeline.evaluate.EVALUATORS``): the
translation evaluator takes ``--test-a`` / ``--test-b`` ..., the generation evaluator
``--test`` / ``--train`` ...; ``python -m pipeline.evaluate --model M --help`` shows the one
that applies.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.evaluate import evaluator_for_task

log = logging.getLogger("pipeline.evaluate")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    peek = argparse.ArgumentParser(prog="python -m pipeline.evaluate", add_help=False)
    peek.add_argument("--model", type=Path, required=True, help="trained model.pt (pipeline.models.load_trained)")
    known, _ = peek.parse_known_args(argv)
    from pipeline.models import trained_task

    try:
        evaluate = evaluator_for_task(trained_task(known.model))
    except PipelineError as err:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        log.error("%s", err)
        return 1
    return evaluate(argv)


if __name__ == "__main__":
    sys.exit(main())
