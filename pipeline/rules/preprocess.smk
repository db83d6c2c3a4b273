# Stages 2-5, one job per subject wherever the work is per subject:
# windowing (HU + VOI window / MRI normalisation) -> ANTs registration to an automatically
# chosen reference -> CT head-holder masking -> slice extraction and subject-level split.

rule window:
    input:
        "data/raw/{dataset}",
    output:
        "data/windowed/{dataset}/{subject}.nii.gz",
    params:
        path=raw_subject_path,
        command=window_command,
        voxel_mm=PRE["voxel_mm"],
    benchmark:
        "benchmarks/window/{dataset}/{subject}.tsv"
    log:
        "logs/window/{dataset}/{subject}.log",
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m pipeline.preprocess.window {params.command} --input {params.path:q} "
        "--output {output} --voxel-mm {params.voxel_mm} > {log} 2>&1"


rule window_partner:
    input:
        raw="data/raw/{dataset}",
        grid="data/windowed/{dataset}/{subject}.nii.gz",
    output:
        "data/windowed/{dataset}/{subject}.partner.nii.gz",
    params:
        path=lambda w: raw_partner(w)[0],
        partner_modality=lambda w: raw_partner(w)[1],
        window=window_flags(),
        percentiles=" ".join(f"{p:g}" for p in PRE["mri_percentiles"]),
    log:
        "logs/window/{dataset}/{subject}.partner.log",
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m pipeline.preprocess.window partner --input {params.path:q} "
        "--modality {params.partner_modality} --grid {input.grid} --output {output} "
        "{params.window} --percentiles {params.percentiles} > {log} 2>&1"


rule window_partner_hu:
    # A CT partner also over the full HU range (preprocess.partner_hu_range), for the paired
    # synthetic-CT metrics in HU; registered like the partner, sliced into partner_hu.
    input:
        raw="data/raw/{dataset}",
        grid="data/windowed/{dataset}/{subject}.nii.gz",
    output:
        "data/windowed/{dataset}/{subject}.partner_hu.nii.gz",
    params:
        path=lambda w: raw_partner(w)[0],
        hu_range=" ".join(f"{v:g}" for v in PRE["partner_hu_range"]),
    log:
        "logs/window/{dataset}/{subject}.partner_hu.log",
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m pipeline.preprocess.window partner --input {params.path:q} --modality CT "
        "--grid {input.grid} --output {output} --hu-range {params.hu_range} > {log} 2>&1"


rule choose_reference:
    input:
        reference_candidates,
    output:
        "data/registered/{dataset}/reference.json",
    params:
        seed=config["seed"],
        rigid=cli_flags(REG, only="rigid_"),
    log:
        "logs/register/{dataset}/choose_reference.log",
    conda:
        "../../envs/register.yaml"
    shell:
        "python -m pipeline.preprocess.register choose --inputs {input} --out {output} "
        "--seed {params.seed} {params.rigid} > {log} 2>&1"


rule register:
    input:
        moving="data/windowed/{dataset}/{subject}.nii.gz",
        reference="data/registered/{dataset}/reference.json",
    output:
        image="data/registered/{dataset}/{subject}.nii.gz",
        transforms=directory("data/registered/{dataset}/{subject}.transforms"),
        qc="data/registered/{dataset}/{subject}.qc.json",
    params:
        seed=config["seed"],
        knobs=cli_flags(REG),
    resources:
        **job_resources(config, "register"),
    benchmark:
        "benchmarks/register/{dataset}/{subject}.tsv"
    log:
        "logs/register/{dataset}/{subject}.log",
    conda:
        "../../envs/register.yaml"
    shell:
        "python -m pipeline.preprocess.register register --moving {input.moving} "
        "--reference-json {input.reference} --out {output.image} --transforms {output.transforms} "
        "--qc {output.qc} --seed {params.seed} {params.knobs} > {log} 2>&1"


rule register_partner:
    input:
        image="data/windowed/{dataset}/{subject}.{kind}.nii.gz",
        reference="data/registered/{dataset}/reference.json",
        transforms="data/registered/{dataset}/{subject}.transforms",
    output:
        "data/registered/{dataset}/{subject}.{kind}.nii.gz",
    wildcard_constraints:
        kind="partner|partner_hu",
    log:
        "logs/register/{dataset}/{subject}.{kind}.log",
    conda:
        "../../envs/register.yaml"
    shell:
        "python -m pipeline.preprocess.register apply --image {input.image} "
        "--reference-json {input.reference} --transforms {input.transforms} --out {output} "
        "> {log} 2>&1"


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
    input:
        image="data/registered/{dataset}/{subject}{partner}.nii.gz",
        mask="data/masked/{dataset}/mask.nii.gz",
    output:
        image="data/masked/{dataset}/{subject}{partner}.nii.gz",
    wildcard_constraints:
        partner=r"(\.partner)?",
    log:
        "logs/mask/{dataset}/{subject}{partner}.log",
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m pipeline.preprocess.mask_headholder apply --image {input.image} "
        "--mask {input.mask} --out {output.image} > {log} 2>&1"


rule mask_overlay:
    input:
        image="data/registered/{dataset}/{subject}.nii.gz",
        mask="data/masked/{dataset}/mask.nii.gz",
    output:
        "data/masked/{dataset}/qc/{subject}.png",
    log:
        "logs/mask/{dataset}/{subject}.overlay.log",
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m pipeline.preprocess.mask_headholder overlay --image {input.image} "
        "--mask {input.mask} --out {output} > {log} 2>&1"


rule extract_slices:
    input:
        # one function per name (not unpack): a dry run before the download checkpoint has
        # run can then still format the command
        volumes=lambda w: slice_inputs(w)["volumes"],
        partners=lambda w: slice_inputs(w)["partners"],
        partners_hu=lambda w: slice_inputs(w)["partners_hu"],
        qc=lambda w: slice_inputs(w)["qc"],
        reference="data/registered/{dataset}/reference.json",
        overlays=lambda w: slice_inputs(w).get("overlays", []),
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
        val_fraction=SLICES["val_fraction"],
        test_fraction=SLICES["test_fraction"],
        out_dir=lambda w: f"data/slices/{w.dataset}",
        partner_hu_range=" ".join(f"{v:g}" for v in PRE["partner_hu_range"]),
    benchmark:
        "benchmarks/slices/{dataset}.tsv"
    log:
        "logs/slices/{dataset}.log",
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m pipeline.preprocess.extract_slices --volumes {input.volumes} "
        "--partners {input.partners} --partners-hu {input.partners_hu} --partner-hu-range {params.partner_hu_range} "
        "--qc {input.qc} --reference-json {input.reference} "
        "--out-dir {params.out_dir} --axial-fraction {params.axial_fraction} --slab {params.slab} "
        "--size {params.size} --val-fraction {params.val_fraction} "
        "--test-fraction {params.test_fraction} --seed {params.seed} > {log} 2>&1"
