# medgan workflow: raw scans -> windowed -> registered -> masked -> slices -> model -> metrics.
# Usage: snakemake --cores 8 results/cyclegan_ct_mri/metrics.json
# Every knob is in params.yaml (validated against pipeline/schemas/params.schema.yaml here);
# the logic lives in the pipeline/ package, each rule is a thin call of one stage's CLI.
import sys

sys.path.insert(0, workflow.basedir)

from pipeline.config import validate_params


configfile: "params.yaml"
report: "report/workflow.rst"  # `snakemake --report report.html <target>`: captions in report/


validate_params(config, source="params.yaml (with --config/--configfile overrides)")


include: "pipeline/rules/common.smk"
include: "pipeline/rules/data.smk"
include: "pipeline/rules/preprocess.smk"
include: "pipeline/rules/xray.smk"
include: "pipeline/rules/ct_slices.smk"
include: "pipeline/rules/ct_thorax.smk"
include: "pipeline/rules/cxr_cardiomegaly.smk"
include: "pipeline/rules/qc.smk"
include: "pipeline/rules/train.smk"
include: "pipeline/rules/evaluate.smk"
include: "pipeline/rules/seg2ct.smk"
include: "pipeline/rules/stylegan.smk"
include: "pipeline/rules/reader_study.smk"
include: "pipeline/rules/verdict.smk"


rule all:
    default_target: True
    input:
        expand("results/{experiment}/metrics.json", experiment=list(config["experiments"])),
        expand(  # each experiment that declares claims: its verdict (pipeline/rules/verdict.smk)
            "results/{experiment}/verdict.json",
            experiment=[name for name, exp in config["experiments"].items() if exp.get("claims")],
        ),
