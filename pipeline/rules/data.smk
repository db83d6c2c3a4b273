# Stage 1: materialise the selected source (built-in phantoms or a real dataset) in data/raw/.


checkpoint download:
    output:
        directory("data/raw/{dataset}"),
    params:
        flags=lambda w: download_flags(w.dataset),
    benchmark:
        "benchmarks/download/{dataset}.tsv"
    log:
        "logs/download/{dataset}.log",
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m pipeline.sources.download --dataset {wildcards.dataset} --out {output} "
        "{params.flags} > {log} 2>&1"
