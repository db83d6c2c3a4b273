# Stages 2-5 for chest CT with six-class label maps (report 003, TCIA layout): the slices nearest
# the level of the largest lung area, HU window -> [0, 1], image linear / map nearest-neighbour
# resize, split by patient. No registration or masking.


rule prepare_thorax_slices:
    input:
        raw="data/raw/{dataset}",
    output:
        train="data/slices/{dataset}/train.npz",
        val="data/slices/{dataset}/val.npz",
        test="data/slices/{dataset}/test.npz",
        manifest="data/slices/{dataset}/manifest.csv",
        contact_sheet=report(
            "data/slices/{dataset}/contact_sheet.png",
            caption="../../report/thorax_slices_contact_sheet.rst",
            category="Slices",
            subcategory="{dataset}",
        ),
    wildcard_constraints:
        dataset=name_pattern(THORAX_DATASETS),
    params:
        flags=thorax_slices_flags,
        out_dir=lambda w: f"data/slices/{w.dataset}",
    benchmark:
        "benchmarks/slices/{dataset}.tsv"
    log:
        "logs/slices/{dataset}.log",
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m pipeline.preprocess.thorax_slices --raw {input.raw} --out-dir {params.out_dir} "
        "{params.flags} > {log} 2>&1"
