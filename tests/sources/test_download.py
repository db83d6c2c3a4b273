"""Every source through the download stage, against archives in each dataset's real format
served from 127.0.0.1."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import sys
import types
import urllib.parse
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from pipeline.errors import ConfigError, InputDataError
from pipeline.privacy import load_salt, pseudonym
from pipeline.sources import download, weights
from pipeline.sources.download import download_dataset, main
from pipeline.sources.http_fetch import ChecksumError
from pipeline.sources.real_datasets import choose_subset, published_sha256, read_sums

IXI_IDS = ["IXI002-Guys-0828", "IXI012-HH-1211", "IXI035-IOP-0873"]
SECRET = "kaggle-secret-0123456789abcdef"


def _tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]


# ---------------------------------------------------------------- IXI


@pytest.fixture
def ixi_server(server, build):
    volumes = {f"{sid}-T2.nii.gz": build.nifti_gz(i) for i, sid in enumerate(IXI_IDS)}
    server.add("/IXI/IXI-T2.tar", build.tar(volumes))  # the real tar is flat and uncompressed
    return server, volumes


def _same_volume(written: Path, original: bytes) -> bool:
    """Same voxels, affine and data type (the header's text fields are blanked on the way in)."""
    a, b = nib.load(written), nib.Nifti1Image.from_bytes(gzip.decompress(original))
    return (
        np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
        and np.array_equal(a.affine, b.affine)
        and a.get_data_dtype() == b.get_data_dtype()
    )


def test_ixi_t2_download_lands_in_the_ixi_layout(ixi_server, tmp_path, fast, own_download_cache):
    server, volumes = ixi_server
    out = tmp_path / "data" / "raw" / "mri_t2"

    download_dataset("ixi_t2", out, base_url=server.url("/IXI"), settings=fast, pseudonymise=False)

    rows = _tsv(out / "subjects.tsv")
    assert [r["subject_id"] for r in rows] == IXI_IDS
    assert {r["modality"] for r in rows} == {"MR"}
    assert all(r["partner_path"] == "" and r["partner_modality"] == "" for r in rows)
    for row in rows:
        assert row["path"] == f"IXI-T2/{row['subject_id']}-T2.nii.gz"
        assert _same_volume(out / row["path"], volumes[f"{row['subject_id']}-T2.nii.gz"])
    tar_sha = hashlib.sha256(server.routes["/IXI/IXI-T2.tar"].body).hexdigest()
    assert read_sums(out / ".sha256") == {"IXI-T2.tar": tar_sha}
    assert read_sums(own_download_cache / "downloads" / "mri_t2" / ".sha256") == {"IXI-T2.tar": tar_sha}
    assert sorted(p.name for p in out.parent.iterdir()) == ["mri_t2"], "the download stays outside"
    assert _no_temporaries(out.parent)


def test_ixi_t2_subset_is_reproducible_and_reuses_the_cached_tar(ixi_server, tmp_path, fast):
    server, _ = ixi_server
    first, second = tmp_path / "a" / "mri_t2", tmp_path / "b" / "mri_t2"
    cache = tmp_path / "cache"

    download_dataset(
        "ixi_t2", first, base_url=server.url("/IXI"), n_subjects=2, seed=3, cache_dir=cache, settings=fast
    )
    download_dataset(
        "ixi_t2", second, base_url=server.url("/IXI"), n_subjects=2, seed=3, cache_dir=cache, settings=fast
    )

    chosen = [r["subject_id"] for r in _tsv(first / "subjects.tsv")]
    salt = load_salt()  # real ids are replaced by salted-hash pseudonyms (pipeline.privacy)
    assert chosen == [pseudonym(s, salt) for s in choose_subset(IXI_IDS, 2, 3)] and len(chosen) == 2
    assert [r["subject_id"] for r in _tsv(second / "subjects.tsv")] == chosen
    assert len(server.requests_for("/IXI/IXI-T2.tar")) == 1  # the second run used the verified cache


def test_changed_remote_file_is_caught_by_the_recorded_sum(ixi_server, build, tmp_path, fast):
    server, _ = ixi_server
    out, cache = tmp_path / "mri_t2", tmp_path / "cache"
    download_dataset("ixi_t2", out, base_url=server.url("/IXI"), cache_dir=cache, settings=fast)
    before = {p.name: p.read_bytes() for p in (out / "IXI-T2").iterdir()}
    (cache / "IXI-T2.tar").unlink()
    server.add("/IXI/IXI-T2.tar", build.tar({"IXI999-HH-0000-T2.nii.gz": build.nifti_gz(99)}))

    with pytest.raises(ChecksumError, match="recorded at the first download"):
        download_dataset("ixi_t2", out, base_url=server.url("/IXI"), cache_dir=cache, settings=fast)

    assert not (cache / "IXI-T2.tar").exists()
    assert {p.name: p.read_bytes() for p in (out / "IXI-T2").iterdir()} == before


def test_offline_download_names_the_url_and_the_local_source(refused_url, tmp_path, fast, capsys):
    base = refused_url.rsplit("/", 1)[0]

    status = main(
        [
            "--source",
            "ixi_t2",
            "--out",
            str(tmp_path / "mri_t2"),
            "--base-url",
            base,
            "--retries",
            "1",
            "--backoff-s",
            "0.01",
            "--progress",
            "lines",
        ]
    )

    error_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert status == 1
    assert len(error_lines) == 1
    assert f"{base}/IXI-T2.tar" in error_lines[0] and "offline" in error_lines[0]
    assert "--source local --local-path" in error_lines[0]
    assert not (tmp_path / "mri_t2").exists()


# ---------------------------------------------------------------- CQ500


def _cq500_zip(build, number: int) -> bytes:
    series = f"CQ500CT{number} CQ500CT{number}/Unknown Study/CT 4cc sec 150cc D3D on"
    return build.zip({f"{series}/CT{i:06d}.dcm": build.dicom(100 * number + i) for i in range(3)})


@pytest.fixture
def cq500_server(server, build):
    reads = "name,Category,R1:ICH,R2:ICH,R3:ICH\n" + "".join(f"CQ500-CT-{n},B1,0,0,1\n" for n in range(4))
    server.add("/cq/reads.csv", reads.encode())
    for number in range(4):
        server.add(f"/cq/CQ500-CT-{number}.zip", _cq500_zip(build, number))
    return server


def test_cq500_without_the_licence_flag_downloads_nothing(cq500_server, tmp_path, fast):
    with pytest.raises(ConfigError) as raised:
        download_dataset("cq500", tmp_path / "ct_head", base_url=cq500_server.url("/cq"), settings=fast)

    assert "CC BY-NC-SA 4.0" in str(raised.value)
    assert "accept_licence: true" in str(raised.value) and "--accept-licence" in str(raised.value)
    assert cq500_server.seen == []
    assert not (tmp_path / "ct_head").exists()


def test_cq500_download_fetches_only_the_chosen_studies(cq500_server, tmp_path, fast):
    out = tmp_path / "ct_head"

    download_dataset(
        "cq500",
        out,
        accept_licence=True,
        base_url=cq500_server.url("/cq"),
        n_subjects=2,
        seed=1,
        settings=fast,
        pseudonymise=False,
    )

    chosen = choose_subset([f"CQ500-CT-{n}" for n in range(4)], 2, 1)
    rows = _tsv(out / "subjects.tsv")
    assert [r["subject_id"] for r in rows] == chosen
    assert all(r["modality"] == "CT" and r["path"] == r["subject_id"] for r in rows)
    requested = {s.path for s in cq500_server.seen}
    assert requested == {"/cq/reads.csv"} | {f"/cq/{name}.zip" for name in chosen}
    for name in chosen:
        number = int(name.rsplit("-", 1)[1])
        dicoms = sorted((out / name).rglob("*.dcm"))
        assert [p.name for p in dicoms] == ["CT000000.dcm", "CT000001.dcm", "CT000002.dcm"]
        assert dicoms[0].read_bytes()[128:132] == b"DICM"
        assert dicoms[0].parent.name == "CT 4cc sec 150cc D3D on"
        assert dicoms[0].parents[2].name == f"CQ500CT{number} CQ500CT{number}"
    assert (out / "reads.csv").read_bytes() == cq500_server.routes["/cq/reads.csv"].body
    assert set(read_sums(out / ".sha256")) == {"reads.csv"} | {f"{n}.zip" for n in chosen}


def test_cq500_study_without_dicom_is_an_input_error(cq500_server, build, tmp_path, fast):
    cq500_server.add("/cq/CQ500-CT-0.zip", build.zip({"CQ500CT0 CQ500CT0/notes.txt": b"no images"}))
    cq500_server.add("/cq/reads.csv", b"name,Category\nCQ500-CT-0,B1\n")

    with pytest.raises(InputDataError, match="holds no DICOM file"):
        download_dataset(
            "cq500",
            tmp_path / "ct_head",
            accept_licence=True,
            base_url=cq500_server.url("/cq"),
            settings=fast,
        )
    assert not (tmp_path / "ct_head").exists()


# ---------------------------------------------------------------- Kermany chest X-ray


def test_kermany_zip_lands_as_class_folders_with_a_manifest(server, build, tmp_path, fast):
    members = {
        "chest_xray/train/NORMAL/IM-0115-0001.jpeg": build.jpeg(1),
        "chest_xray/train/PNEUMONIA/person1_bacteria_1.jpeg": build.jpeg(2),
        "chest_xray/test/NORMAL/IM-0115-0001.jpeg": build.jpeg(3),  # same name in another split
        "chest_xray/test/PNEUMONIA/person100_virus_184.jpeg": build.jpeg(4),
        "__MACOSX/chest_xray/train/NORMAL/._IM-0115-0001.jpeg": b"resource fork",
    }
    server.add("/mendeley/file_downloaded", build.zip(members))
    out = tmp_path / "cxr"

    download_dataset("kermany_cxr", out, base_url=server.url("/mendeley"), settings=fast)

    rows = {r["image_id"]: r for r in _tsv(out / "images.tsv")}
    assert rows == {
        "test_IM-0115-0001": {
            "image_id": "test_IM-0115-0001",
            "label": "NORMAL",
            "path": "NORMAL/test_IM-0115-0001.jpeg",
            "split": "test",
        },
        "test_person100_virus_184": {
            "image_id": "test_person100_virus_184",
            "label": "PNEUMONIA",
            "path": "PNEUMONIA/test_person100_virus_184.jpeg",
            "split": "test",
        },
        "train_IM-0115-0001": {
            "image_id": "train_IM-0115-0001",
            "label": "NORMAL",
            "path": "NORMAL/train_IM-0115-0001.jpeg",
            "split": "train",
        },
        "train_person1_bacteria_1": {
            "image_id": "train_person1_bacteria_1",
            "label": "PNEUMONIA",
            "path": "PNEUMONIA/train_person1_bacteria_1.jpeg",
            "split": "train",
        },
    }
    assert (out / "NORMAL" / "test_IM-0115-0001.jpeg").read_bytes() == members[
        "chest_xray/test/NORMAL/IM-0115-0001.jpeg"
    ]
    assert sorted(p.name for p in out.iterdir()) == [
        ".sha256", "NORMAL", "PNEUMONIA", "deidentification.json", "images.tsv"
    ]  # fmt: skip


# ---------------------------------------------------------------- RSNA ICH (Kaggle API)

RSNA_IMAGES = {"ID_0a1b2c3d4": 1, "ID_1b2c3d4e5": 0, "ID_2c3d4e5f6": 0}
COMPETITION = "rsna-intracranial-hemorrhage-detection"


def _rsna_labels() -> bytes:
    subtypes = ["epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any"]
    rows = ["ID,Label"] + [
        f"{iid}_{s},{label if s in ('any', 'subdural') else 0}"
        for iid, label in RSNA_IMAGES.items()
        for s in subtypes
    ]
    return ("\n".join(rows) + "\n").encode()


@pytest.fixture
def kaggle(server, build, monkeypatch, tmp_path):
    """Kaggle's API on the local server (basic auth required) and an environment without credentials."""
    credentials = ("alice", "right-key-42")
    api = "/api/v1"
    server.add(
        f"{api}/competitions/data/download/{COMPETITION}/stage_2_train.csv",
        build.zip({"stage_2_train.csv": _rsna_labels()}),
        auth=credentials,
    )  # Kaggle zips big files
    for number, iid in enumerate(RSNA_IMAGES):
        quoted = urllib.parse.quote(f"stage_2_train/{iid}.dcm", safe="")
        server.add(
            f"{api}/competitions/data/download/{COMPETITION}/{quoted}", build.dicom(number), auth=credentials
        )
    everything = {
        "stage_2_train.csv": _rsna_labels(),
        "stage_2_sample_submission.csv": b"ID,Label\n",
        **{f"stage_2_train/{iid}.dcm": build.dicom(n) for n, iid in enumerate(RSNA_IMAGES)},
        "stage_2_test/ID_ffffffff0.dcm": build.dicom(50),
    }
    server.add(f"{api}/competitions/data/download-all/{COMPETITION}", build.zip(everything), auth=credentials)
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.delenv("KAGGLE_CONFIG_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return types.SimpleNamespace(server=server, api=server.url(api), credentials=credentials)


def test_rsna_without_credentials_names_where_to_put_them(kaggle, tmp_path, fast):
    with pytest.raises(ConfigError) as raised:
        download_dataset("rsna_ich", tmp_path / "rsna", base_url=kaggle.api, n_subjects=1, settings=fast)

    message = str(raised.value)
    assert "KAGGLE_USERNAME" in message and "KAGGLE_KEY" in message
    assert str(tmp_path / "home" / ".kaggle" / "kaggle.json") in message
    assert kaggle.server.seen == []


def test_rsna_wrong_credentials_never_show_the_key(kaggle, tmp_path, fast, monkeypatch, caplog, capsys):
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", SECRET)
    caplog.set_level(logging.DEBUG)

    with pytest.raises(ConfigError) as raised:
        download_dataset("rsna_ich", tmp_path / "rsna", base_url=kaggle.api, n_subjects=1, settings=fast)

    assert "HTTP 401" in str(raised.value)
    assert "KAGGLE_USERNAME / KAGGLE_KEY environment variables" in str(raised.value)
    captured = capsys.readouterr()
    for text in (str(raised.value), repr(raised.value), caplog.text, captured.out, captured.err):
        assert SECRET not in text
    assert not (tmp_path / "rsna").exists()


def test_rsna_subset_download_with_kaggle_json(kaggle, tmp_path, fast):
    config = tmp_path / "home" / ".kaggle"
    config.mkdir(parents=True)
    (config / "kaggle.json").write_text(json.dumps({"username": "alice", "key": "right-key-42"}))
    out = tmp_path / "rsna"

    download_dataset("rsna_ich", out, base_url=kaggle.api, n_subjects=2, seed=5, settings=fast)

    chosen = choose_subset(RSNA_IMAGES, 2, 5)
    rows = _tsv(out / "images.tsv")
    assert [r["image_id"] for r in rows] == chosen
    assert all(r["label"] == ("ICH" if RSNA_IMAGES[r["image_id"]] else "NO_ICH") for r in rows)
    assert all((out / r["path"]).read_bytes()[128:132] == b"DICM" for r in rows)
    # Unzipped, and RSNA's rows for the slices laid out only, in the file's order.
    kept = [line for line in _rsna_labels().decode().splitlines()[1:] if line.split("_")[1] in {c[3:] for c in chosen}]
    assert (out / "stage_2_train.csv").read_text().splitlines() == ["ID,Label", *kept]
    assert len(kept) == 6 * len(chosen)
    assert all(s.authorization and s.authorization.startswith("Basic ") for s in kaggle.server.seen)
    assert len(kaggle.server.seen) == 3  # labels + 2 slices, nothing else


def test_rsna_full_download_uses_the_competition_archive(kaggle, tmp_path, fast, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", "right-key-42")
    out = tmp_path / "rsna"

    download_dataset("rsna_ich", out, base_url=kaggle.api, settings=fast)

    assert sorted(p.name for p in (out / "stage_2_train").iterdir()) == [
        f"{i}.dcm" for i in sorted(RSNA_IMAGES)
    ]
    assert not (out / "stage_2_test").exists()
    assert len(_tsv(out / "images.tsv")) == 3


# ---------------------------------------------------------------- CheXpert (local archive)

CHEXPERT_HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Pneumonia\n"


def _chexpert_zip(build) -> bytes:
    root = "CheXpert-v1.0-small"
    train = CHEXPERT_HEADER + "".join(
        f"{root}/train/{path},Female,60,{view},AP,{nf},{pn}\n"
        for path, view, nf, pn in [
            ("patient00001/study1/view1_frontal.jpg", "Frontal", "", "1.0"),
            ("patient00001/study1/view2_lateral.jpg", "Lateral", "", "1.0"),
            ("patient00002/study1/view1_frontal.jpg", "Frontal", "1.0", ""),
            ("patient00003/study1/view1_frontal.jpg", "Frontal", "", "-1.0"),
        ]
    )
    valid = (
        CHEXPERT_HEADER + f"{root}/valid/patient64541/study1/view1_frontal.jpg,Male,73,Frontal,AP,1.0,0.0\n"
    )
    images = {f"{root}/train/patient0000{p}/study1/view1_frontal.jpg": build.jpeg(p) for p in (1, 2, 3)}
    images[f"{root}/train/patient00001/study1/view2_lateral.jpg"] = build.jpeg(9)
    images[f"{root}/valid/patient64541/study1/view1_frontal.jpg"] = build.jpeg(10)
    return build.zip({f"{root}/train.csv": train.encode(), f"{root}/valid.csv": valid.encode(), **images})


def test_chexpert_local_zip_is_sorted_into_finding_and_normal(build, write, tmp_path):
    archive = write("CheXpert-v1.0-small.zip", _chexpert_zip(build))
    out = tmp_path / "chexpert"

    download_dataset("chexpert", out, local_path=archive)

    rows = {r["image_id"]: (r["label"], r["split"], r["path"]) for r in _tsv(out / "images.tsv")}
    assert rows == {
        "train_patient00001_study1_view1_frontal": (
            "PNEUMONIA",
            "train",
            "PNEUMONIA/train_patient00001_study1_view1_frontal.jpg",
        ),
        "train_patient00002_study1_view1_frontal": (
            "NORMAL",
            "train",
            "NORMAL/train_patient00002_study1_view1_frontal.jpg",
        ),
        "val_patient64541_study1_view1_frontal": (
            "NORMAL",
            "val",
            "NORMAL/val_patient64541_study1_view1_frontal.jpg",
        ),
    }
    assert (out / "NORMAL" / "train_patient00002_study1_view1_frontal.jpg").read_bytes() == build.jpeg(2)
    assert "Age" not in (out / "images.tsv").read_text()  # demographics stay behind


def test_chexpert_needs_a_local_path(tmp_path):
    with pytest.raises(ConfigError, match="registration-gated"):
        download_dataset("chexpert", tmp_path / "chexpert")


# ---------------------------------------------------------------- local


def test_local_folder_in_a_source_layout_is_laid_out_like_a_download(build, write, tmp_path):
    for i, sid in enumerate(IXI_IDS):
        write(f"my_ixi/{sid}-T2.nii.gz", build.nifti_gz(i))
    out = tmp_path / "mri_t2"

    download_dataset(
        "local", out, local_path=tmp_path / "inputs" / "my_ixi", layout="ixi_t2", n_subjects=2, seed=0,
        pseudonymise=False,
    )

    rows = _tsv(out / "subjects.tsv")
    assert [r["subject_id"] for r in rows] == choose_subset(IXI_IDS, 2, 0)
    assert all((out / r["path"]).is_file() for r in rows)
    assert len(list((tmp_path / "inputs" / "my_ixi").iterdir())) == 3  # the user's copy is untouched


def test_local_cq500_archive_of_study_zips(build, write, tmp_path):
    bundle = build.tar({f"qure.headct.study/CQ500-CT-{n}.zip": _cq500_zip(build, n) for n in (7, 8)}, "gz")
    out = tmp_path / "ct_head"

    download_dataset(
        "local", out, local_path=write("cq500.tar.gz", bundle), layout="cq500", pseudonymise=False
    )

    assert [r["subject_id"] for r in _tsv(out / "subjects.tsv")] == ["CQ500-CT-7", "CQ500-CT-8"]
    assert len(list((out / "CQ500-CT-8").rglob("*.dcm"))) == 3
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no scratch left


def test_local_raw_layout_is_checked_then_copied(write, build, tmp_path):
    header = "subject_id\tmodality\tpath\tpartner_path\tpartner_modality\n"
    write("raw/subjects.tsv", (header + "s01\tCT\ts01\t\t\n").encode())
    write("raw/s01/slice.dcm", build.dicom(1))
    out = tmp_path / "ct_head"

    download_dataset("local", out, local_path=tmp_path / "inputs" / "raw", pseudonymise=False)
    original = pydicom.dcmread(io.BytesIO(build.dicom(1)))
    assert pydicom.dcmread(out / "s01" / "slice.dcm").PixelData == original.PixelData  # de-identified copy

    write("raw/subjects.tsv", (header + "s02\tCT\ts02\t\t\n").encode())
    with pytest.raises(InputDataError, match="path s02 does not exist"):
        download_dataset("local", tmp_path / "other", local_path=tmp_path / "inputs" / "raw")
    assert not (tmp_path / "other").exists()


# ---------------------------------------------------------------- phantom dispatch


def test_phantom_source_calls_the_phantom_writer(tmp_path, monkeypatch, own_download_cache):
    calls = []
    fake = types.ModuleType("pipeline.sources.phantom_head")
    fake.write_phantom_dataset = lambda *args, **knobs: calls.append((args, knobs))
    monkeypatch.setitem(sys.modules, "pipeline.sources.phantom_head", fake)

    main(
        [
            "--source",
            "phantom_head",
            "--out",
            str(tmp_path / "ct_head"),
            "--modality",
            "CT",
            "--n-subjects",
            "4",
            "--n-paired",
            "1",
            "--seed",
            "9",
            "--phantom-option",
            "ct_matrix=64",
            "--phantom-option",
            "ct_slice_mm=5.0",
        ]
    )

    [(args, knobs)] = calls
    assert args[1:] == ("CT", 4, 1, 9) and knobs == {"ct_matrix": 64, "ct_slice_mm": 5.0}
    # Generated in the staging area outside the output's folder, then de-identified into place.
    assert args[0].name == "ct_head" and own_download_cache / "staging" in args[0].parents
    assert (tmp_path / "ct_head" / "deidentification.json").is_file()


def test_unknown_source_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not one of"):
        download_dataset("brats", tmp_path / "x")


# ---------------------------------------------------------------- weights


def test_weight_with_wrong_bytes_is_rejected_by_its_name_prefix(server, tmp_path, fast):
    server.add("/models/vgg19-dcbb9e9d.pth", b"not the ImageNet weights")

    with pytest.raises(ChecksumError):
        weights.fetch_weights(
            tmp_path / "weights", ["vgg19"], torchvision_base_url=server.url("/models"), settings=fast
        )

    assert not (tmp_path / "weights" / "vgg19-dcbb9e9d.pth").exists()
    assert not (tmp_path / "weights" / "vgg19-dcbb9e9d.pth.part").exists()


@pytest.fixture
def test_weight(monkeypatch):
    """A stand-in weight file whose name carries its own SHA-256 prefix, as torchvision's do."""
    content = b"pretend state dict"
    name = f"tiny-{hashlib.sha256(content).hexdigest()[:8]}.pth"
    monkeypatch.setitem(weights.WEIGHT_FILES, "tiny", ("torchvision", name))
    return name, content


def test_weights_download_verifies_and_records_the_full_sum(server, tmp_path, fast, test_weight):
    name, content = test_weight
    server.add(f"/models/{name}", content)

    status = main(
        [
            "weights",
            "--out",
            str(tmp_path / "weights"),
            "--which",
            "tiny",
            "--torchvision-base-url",
            server.url("/models"),
            "--backoff-s",
            "0.01",
        ]
    )

    assert status == 0
    assert (tmp_path / "weights" / name).read_bytes() == content
    assert read_sums(tmp_path / "weights" / ".sha256") == {name: hashlib.sha256(content).hexdigest()}


def test_weights_from_a_local_dir_are_verified_then_copied(tmp_path, test_weight):
    name, content = test_weight
    local = tmp_path / "mine"
    local.mkdir()
    (local / name).write_bytes(content)

    paths = weights.fetch_weights(tmp_path / "weights", ["tiny"], local_dir=local)
    assert paths == {"tiny": tmp_path / "weights" / name}
    assert paths["tiny"].read_bytes() == content

    (local / name).write_bytes(b"tampered")
    with pytest.raises(ChecksumError):
        weights.fetch_weights(tmp_path / "other", ["tiny"], local_dir=local)
    assert not (tmp_path / "other" / name).exists()


def test_pretrained_none_fetches_nothing(tmp_path):
    assert weights.fetch_weights(tmp_path / "weights", pretrained="none") == {}
    assert not (tmp_path / "weights").exists()


def test_published_sums_agree_with_the_prefixes_in_the_file_names():
    names = [name for _, name in weights.WEIGHT_FILES.values()]
    assert [weights.name_sha256_prefix(n) for n in names] == ["f37072fd", "dcbb9e9d", "6726825d"]
    for name in names:
        full = published_sha256(name)
        assert full is None or (len(full) == 64 and full.startswith(weights.name_sha256_prefix(name)))


def test_every_dataset_source_is_offered_on_the_cli():
    parser_sources = next(a for a in download._dataset_parser()._actions if a.dest == "source").choices
    assert tuple(parser_sources) == download.DATASET_SOURCES
