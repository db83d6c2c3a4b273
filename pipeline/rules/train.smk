# Stage 6: the one training engine, configured per experiment: any model (model.name: cyclegan,
# dcgan, cgan) on its named inputs (CycleGAN's a / b from domain_a / domain_b; a generator's
# images from inputs.images), each bound to a dataset's slices. Requests its GPUs as a resource
# so a cluster executor (e.g. snakemake-executor-plugin-slurm) can place it; with
# train.distributed it starts train.gpus data-parallel processes through torchrun.


rule train:
    input:
        unpack(input_slices("train")),
        unpack(input_slices("val")),
        weights=train_weight_inputs,
    output:
        model="models/{experiment}/model.pt",
        history="models/{experiment}/history.csv",
        run="models/{experiment}/run.json",
    params:
        cfg=lambda w: json.dumps(
            {k: experiment_cfg(w.experiment)[k] for k in ("model", "train")}, sort_keys=True
        ),
        inputs=train_input_flags,
        pretrained=pretrained_flag,
        weights_dir=config["weights"]["dir"],
        tracking_uri=config["tracking"]["uri"],
        seed=config["seed"],
        out_dir=lambda w: f"models/{w.experiment}",
        launcher=lambda w: (
            "python -m torch.distributed.run --standalone --nproc_per_node "
            f"{experiment_cfg(w.experiment)['train'].get('gpus', 1)}"
            if experiment_cfg(w.experiment)["train"].get("distributed")
            else "python"
        ),
    resources:
        **job_resources(config, "train"),
        gpu=lambda w: (
            (experiment_cfg(w.experiment)["train"].get("gpus", 1) if experiment_cfg(w.experiment)["train"].get("distributed") else 1)
            if experiment_cfg(w.experiment)["train"].get("device") == "cuda"
            else 0
        ),
    threads: train_job_threads  # train.threads when set (a 1-thread run leaves the other cores to the next job), else 8 capped at --cores
    benchmark:
        "benchmarks/train/{experiment}.tsv"
    log:
        "logs/train/{experiment}.log",
    conda:
        "../../envs/train.yaml"
    shell:
        "{params.launcher} -m pipeline.train {params.inputs} --out {params.out_dir} "
        "--experiment {wildcards.experiment} --config-json {params.cfg:q} {params.pretrained} "
        "--weights-dir {params.weights_dir} --tracking-uri {params.tracking_uri} "
        "--seed {params.seed} > {log} 2>&1"
