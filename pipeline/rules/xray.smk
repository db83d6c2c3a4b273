# Stage 2-5 for 2-D radiographs: one class of a raw image set (e.g. NORMAL of data/raw/chest_xray)
# -> short side scaled, centre-cropped squares, split by patient. No windowing, registration or
# masking: an X-ray class dataset goes from the download straight to its slices.


rule prepare_xray:
    input:
        raw=lambda w: f"data/raw/{xray_raw(w.dataset)}",
    output:
        train="data/slices/{dataset}/train.npz",
        val="data/slices/{dataset}/val.npz",
        test="data/slices/{dataset}/test.npz",
        manifest="data/slices/{dataset}/manifest.csv",
        contact_sheet=report(
            "data/slices/{dataset}/contact_sheet.png",
            caption="../../report/xray_contact_sheet.rst",
            category="Slices",
            subcategory="{dataset}",
        ),
    wildcard_constraints:
        dataset=name_pattern(XRAY_DATASETS),
    params:
        flags=xray_flags,
        out_dir=lambda w: f"data/slices/{w.dataset}",
    benchmark:
        "benchmarks/slices/{dataset}.tsv"
    log:
        "logs/slices/{dataset}.log",
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m pipeline.preprocess.xray --raw {input.raw} --out-dir {params.out_dir} "
        "{params.flags} > {log} 2>&1"
