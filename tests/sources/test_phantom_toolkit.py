"""Tests of what the phantoms share (pipeline/sources/phantom_toolkit.py): knobs read from the
schema with their defaults and checks, CT slices that decode to the HU written, noise fields."""

from __future__ import annotations

import dataclasses

import numpy as np
import pydicom
import pytest
import yaml

from pipeline.config import SCHEMA_PATH
from pipeline.errors import ConfigError
from pipeline.sources import phantom_toolkit as kit
from pipeline.sources.phantom_cxr import CxrPhantomParams
from pipeline.sources.phantom_rsna_ich import RsnaPhantomParams
from pipeline.sources.phantom_tcia_thorax import ThoraxPhantomParams

PHANTOM_SECTIONS = ("phantom_head", "phantom_rsna_ich", "phantom_cxr", "phantom_chexpert", "phantom_tcia_thorax")


@pytest.mark.parametrize("section", PHANTOM_SECTIONS)
def test_every_knob_of_a_phantom_section_has_a_default_that_passes_its_own_schema(section):
    """Read from the schema file here, not through the toolkit: the section's defaults form a
    valid params.yaml section, and the toolkit offers exactly these knobs with these values."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    properties = schema["properties"][section]["properties"]
    defaults = {name: spec["default"] for name, spec in properties.items()}
    import jsonschema

    jsonschema.validate(defaults, {"$defs": schema["$defs"], **schema["properties"][section]})
    typed = kit.knob_defaults(section)
    assert list(typed) == list(properties)
    for name, value in defaults.items():
        assert typed[name] == (tuple(value) if isinstance(value, list) else value) or isinstance(value, dict), name


def test_knob_values_are_typed_checked_and_named_when_wrong():
    params = RsnaPhantomParams(blood_hu=[55, 80], n_patients=3)
    assert params.blood_hu == (55.0, 80.0) and isinstance(params.blood_hu[0], float)
    with pytest.raises(ConfigError, match=r"phantom_rsna_ich\.blood_hu: need \[low, high\] with low <= high"):
        RsnaPhantomParams(blood_hu=(90, 50))
    with pytest.raises(ConfigError, match=r"phantom_rsna_ich\.haemorrhage_fraction: 1\.5 is greater than the maximum"):
        RsnaPhantomParams(haemorrhage_fraction=1.5)
    with pytest.raises(ConfigError, match=r"phantom_tcia_thorax\.tissue_hu\.lung: need \[low, high\]"):
        ThoraxPhantomParams(tissue_hu={"lung": [-800, -900]})
    with pytest.raises(ConfigError, match=r"phantom_cxr: unknown knobs \['colour'\]"):
        kit.params_from_knobs(CxrPhantomParams, {"colour": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.n_patients = 4


def test_the_cli_takes_pairs_and_keeps_unset_knobs_out():
    parser = kit.knob_parser("A phantom.", RsnaPhantomParams)
    out, seed, knobs = kit.parse_cli(parser, ["--out", "x", "--seed", "3", "--blood-hu", "60", "85", "--n-patients", "2"])
    assert (str(out), seed) == ("x", 3)
    assert knobs == {"blood_hu": [60.0, 85.0], "n_patients": 2}
    assert RsnaPhantomParams(**knobs).blood_hu == (60.0, 85.0)


@pytest.mark.parametrize("encoding", [kit.StoredPixels(12, False, -1024), kit.StoredPixels(16, True, 0)])
def test_a_ct_slice_decodes_to_the_values_written(tmp_path, encoding):
    hu = np.array([[-1000, -100, 0], [40, 400, 1500]], np.int32)
    stored = (hu - encoding.rescale_intercept).astype(np.int16 if encoding.signed else np.uint16)
    ds = kit.ct_slice_dataset(stored, encoding, sop_uid=kit.hashed_uid("t", 1), study_uid=kit.hashed_uid("t", 2),
                              series_uid=kit.hashed_uid("t", 3), patient_id="P1", position_lps=(1.5, -2, 30),
                              orientation=(1, 0, 0, 0, 1, 0), pixel_spacing=(0.7, 0.8), slice_mm=5,
                              window=(40, 80))  # fmt: skip
    ds.save_as(tmp_path / "slice.dcm", enforce_file_format=True)
    back = pydicom.dcmread(tmp_path / "slice.dcm")
    decoded = back.pixel_array.astype(np.float64) * float(back.RescaleSlope) + float(back.RescaleIntercept)
    np.testing.assert_array_equal(decoded, hu)
    assert [float(v) for v in back.PixelSpacing] == [0.7, 0.8] and float(back.ImagePositionPatient[2]) == 30
    assert back.SOPInstanceUID.startswith("2.25.") and back.SOPInstanceUID != back.StudyInstanceUID


def test_smooth_noise_has_the_asked_correlation_and_streams_are_independent():
    a, b = kit.random_streams(2, 7, 1, 0)
    again, _ = kit.random_streams(2, 7, 1, 0)
    white = kit.smooth_noise(a, (256, 256), 0.0)
    np.testing.assert_array_equal(white, kit.smooth_noise(again, (256, 256), 0.0))
    smooth = kit.scaled_to_sd(kit.smooth_noise(b, (256, 256), 3.0), 10.0)
    assert smooth.std() == pytest.approx(10.0, rel=1e-4)

    def lag1(field):
        return float(np.corrcoef(field[:, :-1].ravel(), field[:, 1:].ravel())[0, 1])

    # A Gaussian of sigma s correlates neighbours by exp(-1 / (4 s^2)): 0.97 at s = 3, ~0 for white noise.
    assert abs(lag1(white)) < 0.02
    assert lag1(smooth) == pytest.approx(np.exp(-1 / 36), abs=0.02)


def test_linear_resampling_matches_scipys_pixel_aligned_zoom():
    """The fast resampler the RSNA phantom uses to bring its 1 mm anatomy to RSNA's 0.49 mm grid
    agrees with scipy's general (and 40x slower) zoom over the same field of view."""
    from scipy import ndimage

    values = np.random.default_rng(3).random((2, 24, 24, 3)).astype(np.float32)
    fast = kit.resample_linear(values, 48, (1, 2))
    reference = ndimage.zoom(values, (1, 2, 2, 1), order=1, mode="nearest", grid_mode=True)
    assert fast.shape == reference.shape and fast.dtype == np.float32
    np.testing.assert_allclose(fast, reference, atol=1e-5)
    np.testing.assert_allclose(kit.resample_linear(values, 24, (1, 2)), values, atol=1e-6)  # same size: unchanged
