# Stages 7-8: metrics (FID / SSIM / paired metrics on held-out phantoms) and figures, logged into
# the training run in MLflow. metrics.json is written last, so asking for it builds the figures.


def preprocessing_panel_inputs(w):
    ds = w.dataset
    subject = subjects(ds)[0]
    row = manifest_row(ds, subject)
    stages = {
        "raw": f"data/raw/{ds}",
        "windowed": f"data/windowed/{ds}/{subject}.nii.gz",
        "registered": f"data/registered/{ds}/{subject}.nii.gz",
    }
    if final_stage(ds) == "masked":
        stages["masked"] = f"data/masked/{ds}/{subject}.nii.gz"
    return stages


rule preprocessing_panel:
    input:
        unpack(preprocessing_panel_inputs),
    output:
        "results/{experiment}/figures/preprocessing_{dataset}.png",
    params:
        raw_path=lambda w: f"data/raw/{w.dataset}/" + manifest_row(w.dataset, subjects(w.dataset)[0])["path"],
        modality=lambda w: modality(w.dataset),
        subject=lambda w: subjects(w.dataset)[0],
        masked=lambda w, input: f"--masked {input.masked}" if "masked" in input.keys() else "",
    log:
        "logs/figures/{experiment}/preprocessing_{dataset}.log",
    conda:
        f"{ENVS}/train.yaml"
    shell:
        "python -m pipeline.figures preprocessing --raw {params.raw_path:q} "
        "--modality {params.modality} --windowed {input.windowed} "
        "--registered {input.registered} {params.masked} --subject {params.subject} "
        "--out {output} > {log} 2>&1"


def evaluate_inputs(w):
    exp = experiment_cfg(w.experiment)
    a, b = exp["domain_a"], exp["domain_b"]
    return {
        "model": f"models/{w.experiment}/model.pt",
        "history": f"models/{w.experiment}/history.csv",
        "run": f"models/{w.experiment}/run.json",
        "test_a": f"data/slices/{a}/test.npz",
        "test_b": f"data/slices/{b}/test.npz",
        "panels": [f"results/{w.experiment}/figures/preprocessing_{d}.png" for d in (a, b)],
    }


def ct_window_for_metrics():
    window = ct_window(config)
    return "" if window is None else f"--ct-window {window[0]:g} {window[1]:g}"


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        metrics="results/{experiment}/metrics.json",
        samples="results/{experiment}/samples.npz",
        triplets="results/{experiment}/figures/triplets.png",
        losses="results/{experiment}/figures/loss_curves.png",
    params:
        inception=f"{config['weights']['dir']}/pt_inception-2015-12-05-6726825d.pth",
        ct_window=ct_window_for_metrics(),
        evaluate=lambda w: json.dumps(experiment_cfg(w.experiment)["evaluate"], sort_keys=True),
    log:
        "logs/evaluate/{experiment}.log",
    conda:
        f"{ENVS}/train.yaml"
    shell:
        "python -m pipeline.evaluate --model {input.model} --test-a {input.test_a} "
        "--test-b {input.test_b} --history {input.history} --run-json {input.run} "
        "--inception-weights {params.inception} {params.ct_window} "
        "--config-json {params.evaluate:q} --extra-figures {input.panels} "
        "--samples-out {output.samples} --triplets {output.triplets} --loss-curves {output.losses} "
        "--out {output.metrics} > {log} 2>&1"
