"""The one training engine, one module per responsibility (its command line is ``python -m
pipeline.train``):

- ``knobs``: the ``train`` knobs (defaults, checks) and the device, numerics and seeds they select;
- ``data``: a model's named inputs loaded and checked, and the batches drawn from them (``BatchSampler``);
- ``step``: one training step, and a model made ready for steps (speed knobs, LR schedule);
- ``checkpoint``: what a checkpoint holds, written atomically, restored exactly (``Checkpoint``, ``Progress``);
- ``artefacts``: sample grids, history.csv, model.pt, run.json and the MLflow run (``RunArtefacts``);
- ``loop``: ``TrainingRun`` (epochs or kimg ticks, stop on SIGTERM, out-of-memory advice) and ``train``.
"""
