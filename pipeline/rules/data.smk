# Stage 1: materialise the selected source (built-in phantoms or a real dataset) in data/raw/.


checkpoint download:
    output:
        directory("data/raw/{dataset}"),
    params:
        source=lambda w: json.dumps(
            {
                "dataset": dataset_cfg(w.dataset),
                "phantom_head": config["phantom_head"],
                "seed": config["seed"],
            },
            sort_keys=True,
        ),
    log:
        "logs/download/{dataset}.log",
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m pipeline.sources.download --dataset {wildcards.dataset} --out {output} "
        "--config-json {params.source:q} > {log} 2>&1"
