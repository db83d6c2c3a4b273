"""Will the full profiles run where users run them? Checked without a GPU, and costed for one.

- ``checks``: every experiment's networks at the full profile's size take one training step,
  are exported and reloaded, and run their inference and latent stages on one batch, on a
  simulated CUDA device (``simulate``: fake tensors; a tensor left on the CPU raises) or on a
  real GPU. ``tests/test_device_check.py`` runs it in CI.
- ``profiles``: what a profile asks of each experiment's networks (sizes, batches, devices).
- ``steps``: the engine's step on a device, as ``pipeline.train`` takes it.

CLI: ``python -m pipeline.device_check`` (``--help``).
"""
