# Stages 2-5 for labelled head-CT slices in the RSNA 2019 layout (one slice per DICOM file,
# stage_2_train.csv): HU -> brain window -> size x size, split by patient. No registration or
# masking: a slice set goes from the download straight to its slices.


rule prepare_ct_slices:
    input:
        raw="data/raw/{dataset}",
    output:
        train="data/slices/{dataset}/train.npz",
        val="data/slices/{dataset}/val.npz",
        test="data/slices/{dataset}/test.npz",
        manifest="data/slices/{dataset}/manifest.csv",
        contact_sheet=report(
            "data/slices/{dataset}/contact_sheet.png",
            caption="../../report/ct_slices_contact_sheet.rst",
            category="Slices",
            subcategory="{dataset}",
        ),
    wildcard_constraints:
        dataset=name_pattern(CT_SLICE_DATASETS),
    params:
        flags=ct_slices_flags,
        out_dir=lambda w: f"data/slices/{w.dataset}",
    benchmark:
        "benchmarks/slices/{dataset}.tsv"
    log:
        "logs/slices/{dataset}.log",
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m pipeline.preprocess.ct_slices --raw {input.raw} --out-dir {params.out_dir} "
        "{params.flags} > {log} 2>&1"
