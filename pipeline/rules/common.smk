# Helpers shared by the rules: dataset manifests, per-subject lists and parameter lookups.
import csv
import json
import os
import re
import shlex

from pipeline.cluster import job_resources
from pipeline.config import ct_window
from pipeline.sources.weights import WEIGHT_FILES


wildcard_constraints:
    dataset=r"[A-Za-z0-9_]+",
    subject=r"[A-Za-z0-9_-]+",
    experiment="|".join(config["experiments"]),



def dataset_cfg(dataset):
    try:
        return config["datasets"][dataset]
    except KeyError:
        known = ", ".join(sorted(config["datasets"]))
        raise ValueError(f"unknown dataset {dataset!r}; params.yaml datasets: {known}") from None


def modality(dataset):
    return dataset_cfg(dataset)["modality"]


def is_xray(dataset):
    """A class of a 2-D radiograph set (raw + label): prepared by pipeline/preprocess/xray.py,
    without the volume chain's windowing, registration and masking."""
    return "raw" in dataset_cfg(dataset)


def xray_raw(dataset):
    """The downloaded dataset an X-ray class dataset is taken from."""
    raw = dataset_cfg(dataset)["raw"]
    if "source" not in config["datasets"].get(raw, {}):
        raise ValueError(f"datasets.{dataset}.raw: {raw!r} must name a dataset with a source")
    return raw


def name_pattern(names):
    """Wildcard constraint matching exactly these names (nothing when there are none)."""
    return "|".join(re.escape(name) for name in names) or "(?!)"


def is_ct_slices(dataset):
    """A set of labelled head-CT slices in the RSNA 2019 layout (one slice per DICOM file):
    prepared by pipeline/preprocess/ct_slices.py, without the volume chain."""
    cfg = dataset_cfg(dataset)
    return cfg.get("source") in ("phantom_rsna_ich", "rsna_ich") or (
        cfg.get("source") == "local" and cfg.get("layout") == "rsna_ich"
    )


def is_thorax_slices(dataset):
    """Chest CT series with six-class label maps in the TCIA layout (report 003): prepared by
    pipeline/preprocess/thorax_slices.py (rules in ct_thorax.smk), without the volume chain."""
    cfg = dataset_cfg(dataset)
    return cfg.get("source") in ("phantom_tcia_thorax", "tcia") or (
        cfg.get("source") == "local" and cfg.get("layout") == "tcia"
    )


def is_chexpert_layout(dataset):
    """A downloaded dataset kept in CheXpert's own layout (phantom_chexpert, or chexpert / local
    with keep_layout): prepared by pipeline/preprocess/chexpert_prep.py (cxr_cardiomegaly.smk)."""
    cfg = dataset_cfg(dataset)
    return cfg.get("source") == "phantom_chexpert" or (
        cfg.get("source") in ("chexpert", "local")
        and bool(cfg.get("keep_layout"))
        and cfg.get("layout", "chexpert") == "chexpert"
    )


XRAY_DATASETS = [name for name in config["datasets"] if is_xray(name)]
CHEXPERT_DATASETS = [name for name in config["datasets"] if is_chexpert_layout(name)]
CT_SLICE_DATASETS = [name for name in config["datasets"] if is_ct_slices(name)]
THORAX_DATASETS = [name for name in config["datasets"] if is_thorax_slices(name)]
VOLUME_DATASETS = [
    name for name, cfg in config["datasets"].items()
    if cfg["modality"] in ("CT", "MR") and name not in CT_SLICE_DATASETS and name not in THORAX_DATASETS
]


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


def download_flags(dataset):
    """CLI flags of the download stage for one dataset: its source knobs, plus the phantom's."""
    cfg = dataset_cfg(dataset)
    flags = [f"--source {cfg['source']}", f"--modality {cfg['modality']}", f"--seed {config['seed']}"]
    flags.append(f"--on-pixel-risk {config.get('deidentify', {}).get('on_pixel_risk', 'exclude')}")
    for key in ("base_url", "local_path", "layout"):
        if cfg.get(key):
            flags.append(f"--{key.replace('_', '-')} {shlex.quote(str(cfg[key]))}")
    if cfg.get("n_subjects") is not None:
        flags.append(f"--n-subjects {cfg['n_subjects']}")
    if cfg.get("accept_licence"):
        flags.append("--accept-licence")
    if cfg["source"] == "phantom_head":
        flags.append(f"--n-paired {cfg.get('n_paired', 0)}")
    if cfg.get("keep_layout"):
        flags.append("--chexpert-keep-layout")
    if cfg["source"] in ("phantom_head", "phantom_cxr", "phantom_rsna_ich", "phantom_chexpert"):
        for key, value in sorted(config.get(cfg["source"], {}).items()):
            flags.append(f"--phantom-option {shlex.quote(f'{key}={json.dumps(value)}')}")
    flags.extend(thorax_download_flags(cfg))
    return " ".join(flags)


def thorax_download_flags(cfg):
    """phantom_tcia_thorax's knobs, or tcia's collection, as --phantom-option KEY=VALUE (the
    download CLI's source-option channel)."""
    options = {}
    if cfg["source"] == "phantom_tcia_thorax":
        options = config.get("phantom_tcia_thorax", {})
    elif cfg["source"] == "tcia" or (cfg["source"] == "local" and cfg.get("layout") == "tcia"):
        options = {"collection": cfg.get("collection", "LIDC-IDRI")}
    return [f"--phantom-option {shlex.quote(f'{key}={json.dumps(value)}')}" for key, value in sorted(options.items())]


WEIGHTS = config["weights"]


def weight_path(key):
    return "{}/{}".format(WEIGHTS["dir"], WEIGHT_FILES[key][1])


def weight_inputs(*keys):
    """Weight files as job inputs, only when params ask to fetch or copy them in; otherwise
    the stages use whatever is on disk (and say so in run.json / metrics.json)."""
    if WEIGHTS["pretrained"] == "none" or not (WEIGHTS.get("fetch") or WEIGHTS.get("local_dir")):
        return []
    return [weight_path(key) for key in keys]


def weight_key(w):
    return next(key for key, (_, name) in WEIGHT_FILES.items() if name == w.weight_file)


def window_flags():
    window = ct_window(config)
    if window is None:
        return "--preset file"
    return f"--center {window[0]:g} --width {window[1]:g}"


def final_stage(dataset):
    """CT goes through head-holder masking; MRI slices come straight from registration."""
    return "masked" if modality(dataset) == "CT" else "registered"


PRE = config["preprocess"]
REG = PRE["register"]
MASK = PRE["mask_headholder"]
SLICES = PRE["slices"]


def cli_flags(knobs, only=None):
    """{'rigid_iterations': [100, 50]} -> '--rigid-iterations 100 50' (the stage CLIs' convention)."""
    flags = []
    for key, value in knobs.items():
        if only is not None and not key.startswith(only):
            continue
        values = value if isinstance(value, list) else [value]
        flags.append(f"--{key.replace('_', '-')} " + " ".join(shlex.quote(str(v)) for v in values))
    return " ".join(flags)


def reference_candidates(w, input):
    """Windowed volumes the reference may be chosen from: all but the held-out paired subjects
    (a derived param: see register_tasks)."""
    paired = set(paired_subjects(w.dataset))
    return [subject_file("windowed", w.dataset, s) for s in subjects(w.dataset) if s not in paired]


def number_words(values):
    """Numbers as the CLIs' words (3.0 -> '3')."""
    return [f"{v:g}" for v in values]


def window_command(dataset):
    """The window CLI's subcommand and knobs for a dataset's own volumes."""
    if modality(dataset) == "CT":
        return ["ct", *shlex.split(window_flags()),
                "--preferred-thickness-mm", f"{PRE['ct_preferred_thickness_mm']:g}"]  # fmt: skip
    return ["mri", "--percentiles", *number_words(PRE["mri_percentiles"])]


def partner_window_flags(dataset):
    """Per partner file (partner_suffixes) the `window partner` knobs: the partner normalised for
    its modality (the manifest's partner_modality), the CT partner over the full HU range."""
    percentiles = number_words(PRE["mri_percentiles"])
    flags = {".partner.nii.gz": [*shlex.split(window_flags()), "--percentiles", *percentiles]}
    if ".partner_hu.nii.gz" in partner_suffixes(dataset):
        flags[".partner_hu.nii.gz"] = ["--hu-range", *number_words(PRE["partner_hu_range"])]
    return flags


#: Sources whose subjects may carry a partner in the other modality (the phantom's held-out pairs;
#: a local folder's subjects.tsv may list them); a real download (CQ500, IXI, ...) never does.
PARTNER_SOURCES = ("phantom_head", "local")


def window_knobs(w):
    """Every knob the dataset's window job passes (its `knobs` param: a changed one reruns it).
    Partner knobs only where partners can exist, so e.g. a new MRI percentile does not rerun a real
    CT dataset's windowing (and its registration and training after it)."""
    has_partners = dataset_cfg(w.dataset)["source"] in PARTNER_SOURCES
    return [window_command(w.dataset), str(PRE["voxel_mm"]), partner_window_flags(w.dataset) if has_partners else {}]


def window_tasks(w, input):
    """The window job's tasks (pipeline.preprocess.batch): per subject `window ct|mri`, then for
    a paired subject `window partner` onto the subject's grid for each partner file. A derived
    param, as register_tasks; window_knobs carries the knobs."""
    paired = set(paired_subjects(w.dataset))
    tasks = []
    for row in manifest_rows(w.dataset):
        s = row["subject_id"]
        grid = subject_file("windowed", w.dataset, s)
        task = [[
            *window_command(w.dataset), "--input", f"data/raw/{w.dataset}/{row['path']}", "--output", grid,
            "--voxel-mm", str(PRE["voxel_mm"]),
        ]]  # fmt: skip
        for suffix, knobs in partner_window_flags(w.dataset).items() if s in paired else ():
            partner_modality = "CT" if suffix == ".partner_hu.nii.gz" else row["partner_modality"]
            task.append([
                "partner", "--input", f"data/raw/{w.dataset}/{row['partner_path']}",
                "--modality", partner_modality, "--grid", grid, "--output", subject_file("windowed", w.dataset, s, suffix), *knobs,
            ])  # fmt: skip
        tasks.append(task)
    return json.dumps(tasks)


#: Stages run as one job per dataset (pipeline.preprocess.batch): their per-subject files are in
#: one folder, the job's output.
BATCHED_STAGES = ("windowed", "registered", "masked")


#: Processes of a batched job: the CPUs a cluster job of register asks for (resources.register,
#: which sizes mask_headholder too); a local run caps them at --cores.
SUBJECT_WORKERS = job_resources(config, "register").get("cpus_per_task", 1)


def subject_dir(stage, dataset):
    """Where a stage keeps its per-subject files: data/<stage>/<dataset>/subjects for the batched
    stages (one job per dataset), data/<stage>/<dataset> otherwise."""
    return f"data/{stage}/{dataset}/subjects" if stage in BATCHED_STAGES else f"data/{stage}/{dataset}"


def subject_file(stage, dataset, subject, suffix=".nii.gz"):
    return f"{subject_dir(stage, dataset)}/{subject}{suffix}"


def stage_input(stage, dataset, subs):
    """What a job reading these subjects' files at a stage depends on: the batched stage's
    folder, or the files themselves (a stage run one job per subject)."""
    if stage in BATCHED_STAGES:
        return subject_dir(stage, dataset)
    return [subject_file(stage, dataset, s) for s in subs]


def check_stage(stage, dataset):
    if stage == "masked" and final_stage(dataset) != "masked":
        raise ValueError(f"dataset {dataset} ({modality(dataset)}) has no masked stage: CT only")


def stage_volumes(w):
    """Input of a contact sheet: every subject's volume at one preprocessing stage; only CT
    datasets have a masked stage."""
    check_stage(w.stage, w.dataset)
    return stage_input(w.stage, w.dataset, subjects(w.dataset))


def stage_volume_files(w):
    check_stage(w.stage, w.dataset)
    return [subject_file(w.stage, w.dataset, s) for s in subjects(w.dataset)]


def partner_suffixes(dataset):
    """A paired subject's partner files: the partner normalised for its modality, and a CT partner
    (an MR dataset's) also over the full HU range (`window partner --hu-range`; the paired MAE in HU)."""
    return (".partner.nii.gz",) + (() if modality(dataset) == "CT" else (".partner_hu.nii.gz",))


def register_tasks(w, input):
    """The register job's tasks (pipeline.preprocess.batch): per subject the `register register`
    command with every knob, then `register apply` for its partner.

    The subject list comes from the download checkpoint's manifest, which a dry run may not have
    read yet: a param built from it would be recorded as "<TBD>" there and rerun the job and
    everything after it. Taking ``input`` makes it a derived param that Snakemake leaves out of
    its params check (a new subject list changes data/raw/<dataset>, an input, anyway); the
    rule's ``knobs`` param carries the knobs, so a changed knob still reruns the job."""
    reference = f"data/registered/{w.dataset}/reference.json"
    knobs = shlex.split(cli_flags(REG))
    paired = set(paired_subjects(w.dataset))
    tasks = []
    for s in subjects(w.dataset):
        task = [[
            "register", "--moving", subject_file("windowed", w.dataset, s), "--reference-json", reference,
            "--out", subject_file("registered", w.dataset, s),
            "--transforms", subject_file("registered", w.dataset, s, ".transforms"),
            "--qc", subject_file("registered", w.dataset, s, ".qc.json"), "--seed", str(config["seed"]), *knobs,
        ]]  # fmt: skip
        for suffix in partner_suffixes(w.dataset) if s in paired else ():
            task.append([
                "apply", "--image", subject_file("windowed", w.dataset, s, suffix),
                "--reference-json", reference, "--transforms", subject_file("registered", w.dataset, s, ".transforms"),
                "--out", subject_file("registered", w.dataset, s, suffix),
            ])  # fmt: skip
        tasks.append(task)
    return json.dumps(tasks)


def mask_tasks(w, input):
    """The mask job's tasks: per subject `mask_headholder apply` (and for its partner), then the
    overlay picture of the subject. A derived param, as register_tasks (the mask's knobs are in
    its own input, data/masked/<dataset>/mask.nii.gz)."""
    mask = f"data/masked/{w.dataset}/mask.nii.gz"
    paired = set(paired_subjects(w.dataset))
    tasks = []
    for s in subjects(w.dataset):
        suffixes = [".nii.gz", *(partner_suffixes(w.dataset) if s in paired else ())]
        task = [
            ["apply", "--image", subject_file("registered", w.dataset, s, suffix), "--mask", mask,
             "--out", subject_file("masked", w.dataset, s, suffix)]
            for suffix in suffixes
        ]  # fmt: skip
        task.append(["overlay", "--image", subject_file("registered", w.dataset, s), "--mask", mask,
                     "--out", f"data/masked/{w.dataset}/qc/{s}.png"])  # fmt: skip
        tasks.append(task)
    return json.dumps(tasks)


def preprocessing_qc(dataset):
    """The registration table and one contact sheet per stage the dataset goes through
    (X-ray classes: the prepared squares' contact sheet)."""
    if is_xray(dataset) or is_ct_slices(dataset) or is_thorax_slices(dataset):
        return [f"data/slices/{dataset}/contact_sheet.png"]
    stages = ["windowed", "registered"] + (["masked"] if final_stage(dataset) == "masked" else [])
    return [f"data/registered/{dataset}/qc.csv"] + [f"data/{s}/{dataset}/contact_sheet.png" for s in stages]


def slice_inputs(w):
    """The slice extractor's per-subject files: final-stage volumes and partners (CT partners also
    in full HU), QC records (used as derived params: see register_tasks)."""
    stage = final_stage(w.dataset)
    subs = subjects(w.dataset)
    return {
        "volumes": [subject_file(stage, w.dataset, s) for s in subs],
        "partners": [subject_file(stage, w.dataset, s, ".partner.nii.gz") for s in paired_subjects(w.dataset)],
        "partners_hu": [subject_file(stage, w.dataset, s, ".partner_hu.nii.gz") for s in paired_subjects(w.dataset)
                        if ".partner_hu.nii.gz" in partner_suffixes(w.dataset)],
        "qc": [subject_file("registered", w.dataset, s, ".qc.json") for s in subs],
    }


def experiment_cfg(experiment):
    return config["experiments"][experiment]


def gpus_for(device):
    """The `gpu` resource of a job whose networks run on ``device``: one GPU for cuda (a cluster
    executor then places it on a GPU node), none for cpu or auto (auto uses CUDA when the node
    it lands on has one)."""
    return 1 if device == "cuda" else 0


def section_gpus(section):
    """Input function of a rule's `gpu` resource: from its experiment's ``section`` (e.g.
    classifier, segmenter, evaluate) ``device`` knob."""
    return lambda w: gpus_for(experiment_cfg(w.experiment).get(section, {}).get("device", "auto"))


def experiment_inputs(experiment):
    """The model's named inputs -> dataset: a generation experiment's `inputs`, or a translation
    experiment's domain_a / domain_b as CycleGAN's inputs a / b."""
    exp = experiment_cfg(experiment)
    if "inputs" in exp:
        return dict(exp["inputs"])
    return {"a": exp["domain_a"], "b": exp["domain_b"]}


MAP_TO_IMAGE_MODELS = ("seg2ct",)
"""Models of task map_to_image (report 003): evaluated by their own rules in pipeline/rules/seg2ct.smk."""


def is_map_to_image(experiment):
    """A generator from a label map (report 003's seg2ct): pipeline/evaluate/tasks/map_to_image.py."""
    exp = experiment_cfg(experiment)
    return "inputs" in exp and exp.get("model", {}).get("name") in MAP_TO_IMAGE_MODELS


def is_stylegan_editing(experiment):
    """Report 004's StyleGAN2 + encoder experiment (an `encoder:` block beside `inputs:`): G is
    trained by the shared `train` rule, everything after it by pipeline/rules/stylegan.smk."""
    exp = experiment_cfg(experiment)
    return "inputs" in exp and "encoder" in exp


def is_generation(experiment):
    """A generator from noise (DCGAN, cGAN): evaluated by pipeline/evaluate/tasks/generation.py."""
    return ("inputs" in experiment_cfg(experiment) and not is_map_to_image(experiment)
            and not is_stylegan_editing(experiment))


MAP_TO_IMAGE_EXPERIMENTS = [name for name in config["experiments"] if is_map_to_image(name)]
STYLEGAN_EDITING_EXPERIMENTS = [name for name in config["experiments"] if is_stylegan_editing(name)]
GENERATION_EXPERIMENTS = [name for name in config["experiments"] if is_generation(name)]
TRANSLATION_EXPERIMENTS = [
    name for name in config["experiments"] if "inputs" not in experiment_cfg(name)
]


def input_slices(split):
    """Input function: {"<split>_<input>": data/slices/<dataset>/<split>.npz} per named input."""

    def inputs(w):
        return {
            f"{split}_{name}": f"data/slices/{dataset}/{split}.npz"
            for name, dataset in experiment_inputs(w.experiment).items()
        }

    return inputs


def train_input_flags(w):
    """The train CLI's named inputs: --input <name>=<train.npz> --val-input <name>=<val.npz> per input."""
    flags = []
    for name, dataset in experiment_inputs(w.experiment).items():
        flags += [f"--input {name}=data/slices/{dataset}/train.npz", f"--val-input {name}=data/slices/{dataset}/val.npz"]
    return " ".join(flags)


def train_job_threads(w):
    """Cores the train job reserves: its train.threads when set, else 8 (capped at --cores)."""
    return experiment_cfg(w.experiment)["train"].get("threads") or 8


def train_weight_inputs(w):
    """ImageNet files: report 001's networks (translation), report 003's perceptual VGG-19 (map to image)."""
    if is_map_to_image(w.experiment):
        return weight_inputs("vgg19")
    if is_stylegan_editing(w.experiment):
        return []
    return [] if is_generation(w.experiment) else weight_inputs("resnet18", "vgg19")


def pretrained_flag(w):
    """--pretrained for models with ImageNet-initialisable networks (CycleGAN, seg2ct's VGG-19), else nothing."""
    if is_generation(w.experiment) or is_stylegan_editing(w.experiment):
        return ""
    return f"--pretrained {config['weights']['pretrained']}"


def domain_slices(split):
    def inputs(w):
        exp = experiment_cfg(w.experiment)
        return {
            "a": f"data/slices/{exp['domain_a']}/{split}.npz",
            "b": f"data/slices/{exp['domain_b']}/{split}.npz",
        }

    return inputs


def panel_subject(w):
    """The subject shown in the preprocessing panel: the dataset's first."""
    return subjects(w.dataset)[0]


def panel_raw_path(w):
    return "data/raw/{}/{}".format(w.dataset, manifest_row(w.dataset, panel_subject(w))["path"])


def panel_stage(stage, as_input=True):
    """Input function: the panel subject's volume at one stage (none for MRI's masked stage); with
    as_input, what the job depends on (a batched stage's folder), else the volume's path."""

    def path(w):
        if stage == "masked" and final_stage(w.dataset) != "masked":
            return []
        if as_input:
            return stage_input(stage, w.dataset, [panel_subject(w)])
        return subject_file(stage, w.dataset, panel_subject(w))

    return path


def evaluate_inputs(w):
    exp = experiment_cfg(w.experiment)
    a, b = exp["domain_a"], exp["domain_b"]
    return {
        "weights": weight_inputs("inception"),
        "model": f"models/{w.experiment}/model.pt",
        "history": f"models/{w.experiment}/history.csv",
        "run": f"models/{w.experiment}/run.json",
        "test_a": f"data/slices/{a}/test.npz",
        "test_b": f"data/slices/{b}/test.npz",
        "train_a": f"data/slices/{a}/train.npz",  # the real-vs-real floors beside FID / KID / FRD
        "train_b": f"data/slices/{b}/train.npz",
        "panels": [f"results/{w.experiment}/figures/preprocessing_{d}.png" for d in (a, b) if not is_xray(d)],
        "preprocessing_qc": preprocessing_qc(a) + preprocessing_qc(b),
        "classifier": f"models/{w.experiment}/classifier.pt",
    }


def evaluate_flags(w):
    exp = experiment_cfg(w.experiment)
    ev = exp["evaluate"]
    device = ev.get("device", "auto")
    flags = [
        "--direction-names " + " ".join(ev["direction_names"]),
        "--labels " + " ".join(shlex.quote(label) for label in ev["labels"]),
        "--modalities {} {}".format(modality(exp["domain_a"]), modality(exp["domain_b"])),
        "--mri-percentiles " + " ".join(f"{p:g}" for p in PRE["mri_percentiles"]),
        f"--batch-size {ev['batch_size']}",
        f"--n-figure-examples {ev['n_figure_examples']}",
        f"--seed {config['seed']}",
    ]
    if device != "auto":
        flags.append(f"--device {device}")
    if ev.get("frd") is False:
        flags.append("--skip-frd")
    optional = ("frd_max_images", "n_boot", "min_subjects", "stego_blur_sigma", "stego_noise_sigma", "stego_max_drop",
                "histogram_bins", "diff_upscale_size", "body_threshold_hu")
    flags.append(cli_flags({key: ev[key] for key in optional if key in ev}))
    return " ".join(flags)


def classifier_flags(w):
    """The experiment's classifier knobs as CLI flags (absent knobs keep the CLI's defaults)."""
    exp = experiment_cfg(w.experiment)
    names = " ".join(shlex.quote(label) for label in exp["evaluate"]["labels"])
    knobs = cli_flags(exp.get("classifier", {}))
    return f"--domain-names {names} --seed {config['seed']} {knobs}"


MEMORISATION_KNOBS = ("memorisation_copy_ratio", "memorisation_max_shift", "memorisation_zooms",
                      "memorisation_candidates", "memorisation_quantile")
"""experiments.<name>.evaluate knobs of the memorisation check, passed as --memorisation-* flags."""


def generation_evaluate_flags(w):
    """The generation evaluator's flags from the experiment's evaluate section."""
    ev = experiment_cfg(w.experiment)["evaluate"]
    flags = [f"--seed {config['seed']}"]
    if ev.get("class_names"):
        flags.append("--class-names " + " ".join(shlex.quote(name) for name in ev["class_names"]))
    if ev.get("device", "auto") != "auto":
        flags.append(f"--device {ev['device']}")
    if ev.get("frd") is False:
        flags.append("--skip-frd")
    if ev.get("tstr") is False:
        flags.append("--skip-tstr")
    numbers = ("n_generated", "batch_size", "frd_max_images", *MEMORISATION_KNOBS,
               "d_fake_last_epochs", "n_figure_examples", "walk_steps", "n_nearest_pairs", "n_boot", "min_subjects")
    flags.append(cli_flags({key: ev[key] for key in numbers if key in ev}))
    return " ".join(flags)


def labelled_classifier_flags(w):
    """The classifier's flags in labelled mode (label 0 vs 1 of one dataset's slices)."""
    exp = experiment_cfg(w.experiment)
    names = " ".join(shlex.quote(n) for n in exp["evaluate"].get("class_names", ["healthy", "haemorrhage"]))
    return f"--class-names {names} --seed {config['seed']} {cli_flags(exp.get('classifier', {}))}"


def ct_window_for_metrics():
    window = ct_window(config)
    return "" if window is None else f"--ct-window {window[0]:g} {window[1]:g}"


def unknown_experiment(w):
    """Input function of the catch-all rule: stops planning with the experiments params.yaml knows."""
    known = ", ".join(sorted(config["experiments"]))
    raise ValueError(f"unknown experiment {w.name!r}: params.yaml experiments are {known}")


def xray_flags(w):
    """prepare_xray's CLI flags: the class, preprocess.xray's knobs, the seed."""
    label = shlex.quote(dataset_cfg(w.dataset)["label"])
    return f"--label {label} --seed {config['seed']} {cli_flags(PRE.get('xray', {}))}"


def thorax_slices_flags(w):
    """prepare_thorax_slices' CLI flags: preprocess.thorax_slices' knobs, the dataset's label_maps, the seed."""
    knobs = dict(PRE.get("thorax_slices", {}))
    auto = knobs.pop("auto_rule", {})
    label_maps = shlex.quote(str(dataset_cfg(w.dataset).get("label_maps", "raw")))
    auto_flags = cli_flags({f"auto_{key}": value for key, value in auto.items()})
    return f"--seed {config['seed']} --label-maps {label_maps} {cli_flags(knobs)} {auto_flags}"


def chexpert_flags(w):
    """prepare_chexpert's CLI flags: preprocess.chexpert's knobs and the seed."""
    return f"--seed {config['seed']} {cli_flags(PRE.get('chexpert', {}))}"


def ct_slices_flags(w):
    """prepare_ct_slices' CLI flags: preprocess.ct_slices' knobs and the seed."""
    return f"--seed {config['seed']} {cli_flags(PRE.get('ct_slices', {}))}"


# Report 003, map to image (pipeline/rules/seg2ct.smk)
def map_to_image_slices(split):
    """data/slices/<dataset>/<split>.npz of the experiment's `images` input."""
    return lambda w: f"data/slices/{experiment_cfg(w.experiment)['inputs']['images']}/{split}.npz"


def segmenter_flags(w):
    """The segmenter's knobs (experiments.<name>.segmenter) and the interval settings as CLI flags."""
    exp = experiment_cfg(w.experiment)
    ev = exp["evaluate"]
    intervals = {key: ev[key] for key in ("n_boot", "min_subjects") if key in ev}
    return f"--seed {config['seed']} {cli_flags(exp.get('segmenter', {}))} {cli_flags(intervals)}"


def style_variants(experiment):
    """experiments.<name>.style_variants: variant name -> model overrides (report 003's style test)."""
    return dict(experiment_cfg(experiment).get("style_variants") or {})


STYLE_VARIANTS = sorted({v for name in MAP_TO_IMAGE_EXPERIMENTS for v in style_variants(name)})


def style_variant_config(w):
    """--config-json of one style variant: the experiment's model and train knobs, the variant's
    model overrides on top (the same engine, a named sub-run)."""
    exp = experiment_cfg(w.experiment)
    model = {**exp["model"], **style_variants(w.experiment)[w.variant]}
    return json.dumps({"model": model, "train": exp["train"]}, sort_keys=True)


def style_variant_models(w):
    """The evaluation's inputs: every style variant's model.pt."""
    return [f"models/{w.experiment}/variants/{name}/model.pt" for name in style_variants(w.experiment)]


def style_variant_flags(w):
    return " ".join(f"--style-variant {name}=models/{w.experiment}/variants/{name}/model.pt"
                    for name in style_variants(w.experiment))


def map_to_image_flags(w):
    """The map-to-image evaluator's flags: the experiment's evaluate section and map_perturbation's knobs."""
    exp = experiment_cfg(w.experiment)
    ev = exp["evaluate"]
    perturb = shlex.quote(json.dumps(config.get("map_perturbation", {}), sort_keys=True))
    flags = [f"--seed {config['seed']}", f"--perturb-json {perturb}"]
    if ev.get("device", "auto") != "auto":
        flags.append(f"--device {ev['device']}")
    if ev.get("frd") is False:
        flags.append("--skip-frd")
    if ev.get("frd_per_organ") is False:
        flags.append("--skip-frd-per-organ")
    numbers = ("n_perturbed", "batch_size", "frd_max_images", "style_min_pixels", "diversity_maps", "diversity_draws",
               *MEMORISATION_KNOBS, "n_figure_examples", "histogram_bins", "n_boot", "min_subjects",
               "body_threshold_hu")
    flags.append(cli_flags({key: ev[key] for key in numbers if key in ev}))
    return " ".join(flags)


# Reader study (pipeline/rules/reader_study.smk)
READER_STUDY = config["reader_study"]


def reader_study_data(w):
    """The held-out test sets a study draws from: both domains of a translation experiment, or
    the dataset bound to a generator's `images` input."""
    exp = experiment_cfg(w.experiment)
    if "domain_a" in exp and "domain_b" in exp:
        return {"test_a": f"data/slices/{exp['domain_a']}/test.npz", "test_b": f"data/slices/{exp['domain_b']}/test.npz"}
    dataset = (exp.get("inputs") or {}).get("images") or exp.get("dataset")
    if not dataset:
        raise ValueError(f"experiments.{w.experiment}: neither domain_a/domain_b nor an images dataset to draw real images from")
    return {"real": f"data/slices/{dataset}/test.npz"}


def reader_study_inputs(w):
    return {"model": f"models/{w.experiment}/model.pt", **reader_study_data(w)}


def reader_study_flags(w):
    """Every knob as a flag (so --config overrides reach the study and a changed knob reruns it)."""
    rs = READER_STUDY
    data = " ".join(f"--{name.replace('_', '-')} {path}" for name, path in reader_study_data(w).items())
    presets = " ".join(f"--window-preset {name}:{low:g}:{high:g}" for name, (low, high) in rs["window_presets"].items())
    return (
        f"{data} --n-images {rs['n_images']} --pick {rs['pick']} "
        f"--candidates-per-image {rs['candidates_per_image']} "
        "--display-window " + " ".join(f"{v:g}" for v in rs["display_window"]) + f" {presets} "
        + ("--confidence" if rs["confidence"] else "--no-confidence")
        + f" --direction {rs['direction']}"
    )


# Report 004 (pipeline/rules/stylegan.smk): the StyleGAN2 + encoder experiment's stage flags


def stylegan_cfg(w):
    return experiment_cfg(w.experiment)



def stylegan_dataset(w):
    return experiment_inputs(w.experiment)["images"]


def stylegan_slices(split):
    return lambda w: f"data/slices/{stylegan_dataset(w)}/{split}.npz"


def stylegan_intervals(w):
    ev = stylegan_cfg(w)["evaluate"]
    return f"--min-subjects {ev['min_subjects']} --n-boot {ev['n_boot']} --seed {config['seed']}"


def encoder_config_json(w):
    enc = stylegan_cfg(w)["encoder"]
    model = {"name": "stylegan2_encoder", "generator": f"models/{w.experiment}/model.pt", **enc["model"]}
    return json.dumps({"model": model, "train": enc["train"]}, sort_keys=True)


def inversion_flags(w):
    return cli_flags(stylegan_cfg(w)["inversion"])


def separation_flags(w):
    return cli_flags(stylegan_cfg(w)["separation"])


def edit_flags(w):
    knobs = dict(stylegan_cfg(w)["edit"])
    direction = knobs.pop("direction")
    return f"--edit-direction {direction} {cli_flags(knobs)}"


def ctr_segmenter_flags(w):
    return cli_flags(stylegan_cfg(w)["ctr_segmenter"])


def verdict_claims(w):
    claims = experiment_cfg(w.experiment).get("claims") or []
    if not claims:
        raise ValueError(f"params.yaml: experiments.{w.experiment}.claims is empty: nothing to judge")
    return json.dumps(claims, sort_keys=True)
