# Stages 2-5 for CheXpert-layout chest X-rays (report 004, dataset cxr_cardiomegaly): CheXpert's
# CSVs -> frontal views, one channel, size x size, labels under the uncertain-label policy, split
# by patient; the phantom's truth (CTR, heart / thorax maps, CTR ladders) rides along. No
# windowing, registration or masking. The StyleGAN experiment's rules are in stylegan.smk.


rule prepare_chexpert:
    input:
        raw="data/raw/{dataset}",
    output:
        train="data/slices/{dataset}/train.npz",
        val="data/slices/{dataset}/val.npz",
        test="data/slices/{dataset}/test.npz",
        ladder="data/slices/{dataset}/ctr_ladder.npz",
        manifest="data/slices/{dataset}/manifest.csv",
        contact_sheet=report(
            "data/slices/{dataset}/contact_sheet.png",
            caption="../../report/chexpert_contact_sheet.rst",
            category="Slices",
            subcategory="{dataset}",
        ),
    wildcard_constraints:
        dataset=name_pattern(CHEXPERT_DATASETS),
    params:
        flags=chexpert_flags,
        out_dir=lambda w: f"data/slices/{w.dataset}",
    benchmark:
        "benchmarks/slices/{dataset}.tsv"
    log:
        "logs/slices/{dataset}.log",
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m pipeline.preprocess.chexpert_prep --raw {input.raw} --out-dir {params.out_dir} "
        "{params.flags} > {log} 2>&1"
