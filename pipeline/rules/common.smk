# Helpers shared by the rules: dataset manifests, per-subject lists and parameter lookups.
import csv
import json

from pipeline.config import ct_window


wildcard_constraints:
    dataset=r"[A-Za-z0-9_]+",
    subject=r"[A-Za-z0-9_-]+",
    experiment="|".join(config["experiments"]),


ENVS = workflow.basedir + "/envs"


def dataset_cfg(dataset):
    try:
        return config["datasets"][dataset]
    except KeyError:
        known = ", ".join(sorted(config["datasets"]))
        raise ValueError(f"unknown dataset {dataset!r}; params.yaml datasets: {known}") from None


def modality(dataset):
    return dataset_cfg(dataset)["modality"]


def manifest_rows(dataset):
    """Rows of data/raw/<dataset>/subjects.tsv, after the download checkpoint has run."""
    raw_dir = checkpoints.download.get(dataset=dataset).output[0]
    with open(f"{raw_dir}/subjects.tsv", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def manifest_row(dataset, subject):
    for row in manifest_rows(dataset):
        if row["subject_id"] == subject:
            return row
    raise ValueError(f"data/raw/{dataset}/subjects.tsv has no subject {subject!r}")


def subjects(dataset):
    return [row["subject_id"] for row in manifest_rows(dataset)]


def paired_subjects(dataset):
    """Held-out subjects that carry a partner image in the other modality (phantoms only)."""
    return [row["subject_id"] for row in manifest_rows(dataset) if row.get("partner_path")]


def window_flags():
    window = ct_window(config)
    if window is None:
        return "--preset file"
    return f"--center {window[0]:g} --width {window[1]:g}"


def final_stage(dataset):
    """CT goes through head-holder masking; MRI slices come straight from registration."""
    return "masked" if modality(dataset) == "CT" else "registered"
