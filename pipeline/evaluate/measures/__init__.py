"""Shared measures: one module per measure, each a function of images, features or per-image values.

A measure knows no task (translation, generation, map-to-image, editing): it never imports from
``pipeline.evaluate.tasks``, and a task composes measures into its metrics.json
(tests/evaluate/test_layering.py holds both rules).

- Fréchet / KID and the Inception features (``fid``), FRD and radiomic features (``frd``),
  precision / recall / density / coverage (``prdc``), the random VGG-16 embedding (``embedding``);
- ``distribution``: the FID / KID / FRD / PRDC blocks of a real vs a generated set, with their intervals;
- per-image measures: ``image_metrics`` (SSIM, PSNR, MAE), ``dice``, ``regions``, ``steganography``,
  ``organ_style``; ``memorisation`` (nearest training image vs nearest held-out one);
- ``intervals`` (subject bootstrap / jackknife) and ``summary`` (mean, std, n of per-image values
  with the interval);
- models used as measures, each trained by its own rule: ``classifier`` (real-data classifier and
  its scores), ``segmenter`` (U-Net segmenter and its Dice);
- ``slices``: reading the slices npz files every evaluation scores (the data contract, checked).
"""
