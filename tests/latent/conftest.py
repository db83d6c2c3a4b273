"""The latent-space tests share the tiny StyleGAN2 stand-in of tests/models."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
