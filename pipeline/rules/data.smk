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


rule download_weights:
    output:
        f"{WEIGHTS['dir']}/{{weight_file}}",
    wildcard_constraints:
        weight_file="|".join(re.escape(name) for _, name in WEIGHT_FILES.values()),
    params:
        key=weight_key,
        local=lambda w: f"--local-dir {shlex.quote(WEIGHTS['local_dir'])}" if WEIGHTS.get("local_dir") else "",
        out_dir=lambda w, output: os.path.dirname(output[0]),
    log:
        "logs/download/weights_{weight_file}.log",
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m pipeline.sources.download weights --out {params.out_dir} --which {params.key} "
        "{params.local} > {log} 2>&1"
