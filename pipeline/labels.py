"""Label tables and series words that the sources write and the preprocessing reads.

Data flows one way, sources -> preprocess; what both must agree on lives here, below both, so that
no source imports a preprocessing stage.

**Thorax maps (report 003).** Report 003 draws its maps with the grey values {0, 50, 100, 150, 200,
230} (its Fig. 2) and does not say which organ each one is. This project fixes the classes below
(docs/experiment-seg2ct.md, "Data"). Inside npz files and models a map holds the CLASS INDEX 0..5
(uint8); the grey values are only the encoding of label images on disk and in figures. Which
phantom structure falls in which class is a param (``phantom_tcia_thorax.structure_labels``).

* 0 ``background``: air outside the body (and the table, if any);
* 1 ``body``: soft tissue of the body wall and mediastinum: skin, subcutaneous fat, muscle,
  mediastinal fat, oesophagus, the trachea's wall;
* 2 ``lungs``: lung fields including the airways (trachea and bronchi lumen) and the vessels
  inside the lungs, as lung masks are usually drawn;
* 3 ``heart_vessels``: heart and mediastinal blood vessels (aorta, pulmonary trunk, vena cava);
* 4 ``bone``: vertebrae, ribs, sternum, scapulae (cortical and trabecular);
* 5 ``spinal_canal``: spinal canal with the cord.

**Cardiothoracic-ratio maps (report 004).** A chest radiograph's truth map, as phantom_chexpert
writes it and pipeline/preprocess/ctr.py measures it: 0 background, 1 lung fields / thorax,
2 heart (the heart counts as part of the thorax).

**Sharp reconstruction kernels.** Words that mark a bone or lung reconstruction in a CT series'
ConvolutionKernel or SeriesDescription (GE: BONE, BONEPLUS, LUNG, EDGE; descriptions such as
"BONE 5mm", "SHARP"): the volume stage prefers a soft-tissue series over them, and
de-identification keeps them in descriptions it otherwise blanks.
"""

from __future__ import annotations

THORAX_CLASS_NAMES = ("background", "body", "lungs", "heart_vessels", "bone", "spinal_canal")
#: Report 003's grey values, in class order (class index i is written as THORAX_GREY_VALUES[i]).
THORAX_GREY_VALUES = (0, 50, 100, 150, 200, 230)

CTR_BACKGROUND, CTR_THORAX, CTR_HEART = 0, 1, 2
CTR_LABELS = {"background": CTR_BACKGROUND, "thorax": CTR_THORAX, "heart": CTR_HEART}

SHARP_KERNEL_WORDS: tuple[str, ...] = ("BONE", "LUNG", "SHARP", "EDGE")
