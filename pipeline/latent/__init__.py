"""Latent space of a trained StyleGAN2 generator (report 004): inversion of images to codes
(``invert``), linear separation of healthy and diseased codes (``separation``) and edits along a
latent direction (``edit``), each a stage with its own CLI and Snakemake rule
(pipeline/rules/stylegan.smk), writing one section JSON under results/<experiment>/sections/;
the editing task's evaluator (pipeline.evaluate.tasks.editing) joins the sections into metrics.json.
"""
