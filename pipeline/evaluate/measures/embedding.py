"""A feature space that exists offline: a randomly initialised, seeded VGG-16 convolutional trunk.

PRDC and the feature-space half of the memorisation check need an embedding on every machine,
including this one, where no pretrained weights can be downloaded. The choices weighed:

- Inception (FID's space): the right one when its weights are on disk, but then it is absent
  exactly where the pipeline must still run; FID and KID stay null with the reason instead.
- Radiomic features (FRD's space): available offline, but ~0.4 s an image, and mostly invariant
  to position and orientation, so they tell textures apart, not one patient's slice from another
  (poor for copy detection), and the memorisation check needs every training image embedded.
- The real-data classifier's penultimate layer: trained to separate healthy from haemorrhage,
  so it discards the anatomy a copy is recognised by, and it does not exist for unlabelled data.
- A random VGG-16 (chosen): Naeem et al. (ICML 2020, section 5) showed that the features of a
  randomly initialised VGG-16 serve PRDC on data far from ImageNet; a convolutional network with
  random filters still keeps local structure and position, costs ~1 GFLOP a 64x64 slice, and
  with a fixed seed it is the same network on every machine and every run (torch's CPU generator).

Input: grayscale [0, 1] mapped to [-1, 1] and repeated to 3 channels at the slices' own size
(at least 32 px, so that the five poolings leave one cell; smaller slices are upsampled
bilinearly). Output: the 512 channels of the last convolution block (after ReLU and pooling),
averaged over space, L2-normalised so that distances do not depend on the random filters' gain.
"""

from __future__ import annotations

import numpy as np

EMBEDDING_SEED = 0
"""Seed of the random filters: part of the feature space's definition, not a knob (another seed is another space)."""
MIN_SIDE = 32
"""VGG-16 halves the image five times."""

SETTINGS = {
    "name": "random_vgg16",
    "network": "VGG-16 convolutional trunk (torchvision.models.vgg.make_layers(cfgs['D'])), convolutions "
    f"Kaiming-normal (fan-out, ReLU) with zero biases drawn after torch.manual_seed({EMBEDDING_SEED}) on CPU; "
    "no trained weights",
    "input": f"grayscale [0,1] -> [-1,1], repeated to 3 channels, native size (bilinear up to {MIN_SIDE} px "
    "when smaller)",
    "output": "512-d: last block after ReLU and max-pool, mean over space, L2-normalised",
    "why": "always available offline (no download); Naeem et al. 2020 used random VGG-16 embeddings for PRDC "
    "on non-ImageNet data; keeps position and anatomy, which copy detection needs",
}


def build_random_vgg():
    """The fixed random trunk in eval mode on CPU, built without touching the caller's RNG state.

    Only the convolutional trunk is built (torchvision's configuration "D" = VGG-16), then
    initialised as torchvision initialises VGG convolutions: building the whole vgg16() would
    allocate ~500 MB of fully connected weights that are never used.
    """
    import torch
    from torchvision.models.vgg import cfgs, make_layers

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(EMBEDDING_SEED)
        trunk = make_layers(cfgs["D"], batch_norm=False)
        for module in trunk.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                torch.nn.init.zeros_(module.bias)
    return trunk.eval().requires_grad_(False)


def embed(images: np.ndarray, batch_size: int = 32, network=None, device: str = "cpu") -> np.ndarray:
    """(N, 512) float64 L2-normalised features of (N, H, W) slices in [0, 1].

    ``device``: where the trunk runs (a GPU for large training sets; its float rounding differs
    from the CPU's in the last digits, so compare values computed on one kind of device).
    """
    import torch

    network = (network if network is not None else build_random_vgg()).to(device)
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            # per batch: a mirrored view has negative strides, and copying the whole set would double it
            rows = np.ascontiguousarray(images[start : start + batch_size], np.float32)
            batch = torch.from_numpy(rows).to(device)[:, None] * 2.0 - 1.0
            if min(batch.shape[-2:]) < MIN_SIDE:
                scale = MIN_SIDE / min(batch.shape[-2:])
                size = [max(MIN_SIDE, round(side * scale)) for side in batch.shape[-2:]]
                batch = torch.nn.functional.interpolate(batch, size=size, mode="bilinear", align_corners=False)
            features = network(batch.repeat(1, 3, 1, 1)).mean(dim=(2, 3))
            chunks.append(torch.nn.functional.normalize(features, dim=1).double().cpu().numpy())
    if not chunks:
        return np.zeros((0, 512), np.float64)
    return np.concatenate(chunks)
