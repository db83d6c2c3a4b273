# Stages 2-5: windowing (HU + VOI window / MRI normalisation) -> ANTs registration to an
# automatically chosen reference -> CT head-holder masking -> slice extraction and subject-level
# split. Windowing, registration and masking run one job per dataset (pipeline.preprocess.batch:
# a process start costs more than windowing a subject, importing ants more than registering one
# at the default size), each subject computed by the same stage command as on its own, into
# data/<stage>/<dataset>/subjects/.

rule window:
    # Every subject of the dataset, then a paired subject's partner onto its grid (an MR
    # dataset's CT partner also over the full HU range, preprocess.partner_hu_range, for the
    # paired synthetic-CT metrics in HU), over {threads} processes.
    input:
        "data/raw/{dataset}",  # the subject list (tasks) comes from its manifest
    output:
        directory(subject_dir("windowed", "{dataset}")),
    params:
        tasks=window_tasks,
        knobs=window_knobs,
    threads: SUBJECT_WORKERS  # capped at --cores by Snakemake
    resources:
        **job_resources(config, "register"),
    benchmark:
        "benchmarks/window/{dataset}.tsv"
    log:
        "logs/window/{dataset}.log",
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m pipeline.preprocess.batch pipeline.preprocess.window --workers {threads} --keep-going "
        "--tasks {params.tasks:q} > {log} 2>&1"


rule choose_reference:
    input:
        raw="data/raw/{dataset}",  # the subject list (candidates) comes from its manifest
        windowed=subject_dir("windowed", "{dataset}"),
    output:
        "data/registered/{dataset}/reference.json",
    params:
        candidates=reference_candidates,
        seed=config["seed"],
        rigid=cli_flags(REG, only="rigid_"),
    log:
        "logs/register/{dataset}/choose_reference.log",
    conda:
        "../../envs/register.yaml"
    shell:
        "python -m pipeline.preprocess.register choose --inputs {params.candidates} --out {output} "
        "--seed {params.seed} {params.rigid} > {log} 2>&1"


rule register:
    # Every subject of the dataset onto the reference (and its partner with the subject's
    # transforms), over {threads} processes. Subjects finished by a killed or failed run are kept
    # in data/.resume/ and restored by the next (pipeline/preprocess/batch.py --resume-dir).
    input:
        raw="data/raw/{dataset}",  # the subject list (tasks) comes from its manifest
        windowed=subject_dir("windowed", "{dataset}"),
        reference="data/registered/{dataset}/reference.json",
    output:
        directory(subject_dir("registered", "{dataset}")),
    params:
        tasks=register_tasks,
        knobs=lambda w: [cli_flags(REG), config["seed"]],
    threads: SUBJECT_WORKERS  # capped at --cores by Snakemake
    resources:
        **job_resources(config, "register"),
    benchmark:
        "benchmarks/register/{dataset}.tsv"
    log:
        "logs/register/{dataset}.log",
    conda:
        "../../envs/register.yaml"
    shell:
        "python -m pipeline.preprocess.batch pipeline.preprocess.register --workers {threads} "
        "--resume-dir data/.resume/registered/{wildcards.dataset} --tasks {params.tasks:q} > {log} 2>&1"


rule build_headholder_mask:
    input:
        "data/registered/{dataset}/reference.json",
    output:
        "data/masked/{dataset}/mask.nii.gz",
    params:
        knobs=cli_flags(MASK),
    log:
        "logs/mask/{dataset}/build.log",
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m pipeline.preprocess.mask_headholder build --reference-json {input} "
        "--out {output} {params.knobs} > {log} 2>&1"


rule mask_headholder:
    # Every registered volume of the dataset (partners included) masked, and an overlay picture
    # per subject (data/masked/<dataset>/qc/<subject>.png), over {threads} processes.
    input:
        raw="data/raw/{dataset}",  # the subject list (tasks) comes from its manifest
        registered=subject_dir("registered", "{dataset}"),
        mask="data/masked/{dataset}/mask.nii.gz",
    output:
        volumes=directory(subject_dir("masked", "{dataset}")),
        overlays=directory("data/masked/{dataset}/qc"),
    params:
        tasks=mask_tasks,
    threads: SUBJECT_WORKERS  # capped at --cores by Snakemake
    resources:
        **job_resources(config, "register"),
    log:
        "logs/mask/{dataset}.log",
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m pipeline.preprocess.batch pipeline.preprocess.mask_headholder --workers {threads} "
        "--tasks {params.tasks:q} > {log} 2>&1"


rule extract_slices:
    input:
        raw="data/raw/{dataset}",  # the subject list comes from its manifest
        volumes=lambda w: subject_dir(final_stage(w.dataset), w.dataset),
        registered=subject_dir("registered", "{dataset}"),  # the QC records
        reference="data/registered/{dataset}/reference.json",
        overlays=lambda w: ["data/masked/{}/qc".format(w.dataset)] if final_stage(w.dataset) == "masked" else [],
    output:
        train="data/slices/{dataset}/train.npz",
        val="data/slices/{dataset}/val.npz",
        test="data/slices/{dataset}/test.npz",
        manifest="data/slices/{dataset}/manifest.csv",
        contact_sheet=report(
            "data/slices/{dataset}/contact_sheet.png",
            caption="../../report/slices_contact_sheet.rst",
            category="Slices",
            subcategory="{dataset}",
        ),
    wildcard_constraints:
        dataset=name_pattern(VOLUME_DATASETS),  # X-ray classes: prepare_xray (xray.smk)
    params:
        seed=config["seed"],
        axial_fraction=SLICES["axial_fraction"],
        slab=SLICES["slab"],
        size=SLICES["size"],
        frame_mm=lambda w: "" if SLICES["frame_mm"] is None else f"--frame-mm {SLICES['frame_mm']}",
        val_fraction=SLICES["val_fraction"],
        test_fraction=SLICES["test_fraction"],
        out_dir=lambda w: f"data/slices/{w.dataset}",
        partner_hu_range=" ".join(f"{v:g}" for v in PRE["partner_hu_range"]),
        # one function per name (not unpack): a dry run before the download checkpoint has
        # run can then still format the command; derived from input (see register_tasks)
        volumes=lambda w, input: slice_inputs(w)["volumes"],
        partners=lambda w, input: slice_inputs(w)["partners"],
        partners_hu=lambda w, input: slice_inputs(w)["partners_hu"],
        qc=lambda w, input: slice_inputs(w)["qc"],
    benchmark:
        "benchmarks/slices/{dataset}.tsv"
    log:
        "logs/slices/{dataset}.log",
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m pipeline.preprocess.extract_slices --volumes {params.volumes} "
        "--partners {params.partners} --partners-hu {params.partners_hu} "
        "--partner-hu-range {params.partner_hu_range} --qc {params.qc} --reference-json {input.reference} "
        "--out-dir {params.out_dir} --axial-fraction {params.axial_fraction} --slab {params.slab} "
        "--size {params.size} {params.frame_mm} --val-fraction {params.val_fraction} "
        "--test-fraction {params.test_fraction} --seed {params.seed} > {log} 2>&1"
