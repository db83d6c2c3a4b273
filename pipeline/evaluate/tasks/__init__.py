"""Task evaluators: what metrics.json holds for each kind of model, composed of shared measures.

Each task is a function with plain inputs (``evaluate_translation``, ``evaluate_generation``,
``evaluate_map_to_image``, ``assemble`` for StyleGAN editing) plus its figures and a thin CLI made
with pipeline.evaluate.cli. A task evaluator imports measures (``pipeline.evaluate.measures``),
never another task evaluator (tests/evaluate/test_layering.py).
"""
