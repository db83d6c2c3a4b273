# Stage 9: the experiment's verdict. Each claim of experiments.<name>.claims (params.yaml) is
# judged from metrics.json alone (pipeline/verdict.py): PASS / FAIL / UNDECIDED / NOT MEASURED,
# logged on the experiment's MLflow run and shown in the Snakemake report.


rule verdict:
    input:
        metrics="results/{experiment}/metrics.json",
        run="models/{experiment}/run.json",
    output:
        verdict="results/{experiment}/verdict.json",
        table=report(
            "results/{experiment}/verdict.tsv",
            caption="../../report/verdict.rst",
            category="Verdict",
            subcategory="{experiment}",
        ),
    params:
        claims=verdict_claims,
        profile=config.get("profile", "default"),
    log:
        "logs/verdict/{experiment}.log",
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m pipeline.verdict judge --experiment {wildcards.experiment} --metrics {input.metrics} "
        "--run-json {input.run} --claims {params.claims:q} --profile {params.profile} "
        "--out {output.verdict} > {log} 2>&1"
