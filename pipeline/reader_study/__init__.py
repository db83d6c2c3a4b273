"""A fair reader study for any experiment: can a person tell generated images from real ones?

``python -m pipeline.reader_study make EXPERIMENT`` draws ``n_per_class`` held-out real images
and as many generated ones, renders every one through the same path (one window, one size,
one PNG encoder, no metadata, random ids), shuffles them with the recorded seed and writes:

- ``study.html``: the one file readers get: self-contained (images as data URIs, inline
  CSS/JS, no network), a real / fake choice (and a confidence 1-5) per image, and a button
  that downloads the reader's answers as ``answers_<reader>.csv``;
- ``key.json``: the truth per image id, kept with the results and never put in the page;
- ``study.json``: how the study was drawn (seed, pick, sources, sizes, file hashes);
- ``images/``: the PNGs exactly as shown.

``python -m pipeline.reader_study score KEY ANSWERS...`` checks every answers file against the
key and reports, per reader and pooled, accuracy, the share of fakes taken for real,
sensitivity / specificity for "fake" (Clopper-Pearson intervals; pooled: bootstrap over
images), and the AUC from the confidences (bootstrap over images), with a figure of the grid.

Modules: ``draw`` (which images, from where), ``render`` (PNG and page), ``score`` (answers,
measures, figure, MLflow). docs/reader-study.md says how to run a study and what ``pick``
means for the validity of its result.
"""
from __future__ import annotations

#: The two truths (and the two answers) of an image.
REAL, FAKE = "real", "fake"
TRUTHS = (REAL, FAKE)
#: Confidence scale the page offers (1 = guessing, 5 = certain).
CONFIDENCE_LEVELS = (1, 2, 3, 4, 5)
#: How a study draws its generated images: at random, or the discriminator's favourites.
PICKS = ("random", "best_by_discriminator")
#: Columns of an answers CSV, as the page writes them.
ANSWER_COLUMNS = ("study_id", "reader", "image_id", "position", "answer", "confidence")
KEY_FORMAT = 1
