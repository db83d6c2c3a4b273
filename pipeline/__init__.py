"""medgan: a reproducible Snakemake + DVC + MLflow workflow for GANs on medical images.

Data flows one way, and the package mirrors it:
sources (download / phantoms) -> preprocess (window, register, mask, slices)
-> train (one engine, models/) -> evaluate -> figures.
"""
