"""Hand-made classifier.pt files with known outputs, for the evaluators' classifier blocks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.evaluate.measures import classifier

WIDTH, BLOCKS = 4, 2


def _save(network, path: Path, size: int, names: list[str]) -> Path:
    torch.save({"state_dict": network.state_dict(), "width": WIDTH, "n_blocks": BLOCKS, "image_size": size,
                "class_names": names, "domain_names": names,
                "settings": classifier.DEFAULT_SETTINGS | {"width": WIDTH, "n_blocks": BLOCKS, "image_size": size}}, path)
    return path


def _zeroed():
    network = classifier.build_network(WIDTH, BLOCKS)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.zero_()
    return network


def constant_classifier(path: Path, size: int, p_1: float = 0.5025, names=("a", "b")) -> Path:
    """P(class 1) = ``p_1`` for every image: the issue's network that did not learn."""
    network = _zeroed()
    with torch.no_grad():
        network[-1].bias[1] = float(np.log(p_1 / (1 - p_1)))
    return _save(network, path, size, list(names))


def brightness_classifier(path: Path, size: int, threshold: float, steepness: float = 50.0, names=("a", "b")) -> Path:
    """P(class 1) = sigmoid(steepness x (m - threshold)), m the mean of the image twice max-pooled:
    a classifier that calls bright images class 1, confidently."""
    network = _zeroed()
    with torch.no_grad():
        network[0].weight[0, 0, 1, 1] = 1.0  # first block: channel 0 passes the image through
        network[3].weight[0, 0, 1, 1] = 1.0  # second block: and again
        network[-1].weight[1, 0] = steepness
        network[-1].bias[1] = -steepness * threshold
    return _save(network, path, size, list(names))
