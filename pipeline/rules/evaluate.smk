# Stages 7-8: metrics (FID / SSIM / paired metrics on held-out phantoms) and figures, logged into
# the training run in MLflow. metrics.json is written last, so asking for it builds the figures.


rule preprocessing_panel:
    input:
        raw="data/raw/{dataset}",
        windowed=panel_stage("windowed"),
        registered=panel_stage("registered"),
        masked=panel_stage("masked"),
    output:
        "results/{experiment}/figures/preprocessing_{dataset}.png",
    params:
        raw_path=panel_raw_path,
        modality=lambda w: modality(w.dataset),
        subject=panel_subject,
        masked=lambda w, input: f"--masked {input.masked}" if input.masked else "",
    log:
        "logs/figures/{experiment}/preprocessing_{dataset}.log",
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m pipeline.figures preprocessing --raw {params.raw_path:q} "
        "--modality {params.modality} --windowed {input.windowed} "
        "--registered {input.registered} {params.masked} --subject {params.subject} "
        "--out {output} > {log} 2>&1"


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
        flags=evaluate_flags,
    threads: 8  # capped at --cores by Snakemake: on a laptop training runs alone
    benchmark:
        "benchmarks/evaluate/{experiment}.tsv"
    log:
        "logs/evaluate/{experiment}.log",
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m pipeline.evaluate --model {input.model} --test-a {input.test_a} "
        "--test-b {input.test_b} --history {input.history} --run-json {input.run} "
        "--inception-weights {params.inception} {params.ct_window} "
        "{params.flags} --extra-figures {input.panels} {input.preprocessing_qc} "
        "--samples-out {output.samples} --triplets {output.triplets} --loss-curves {output.losses} "
        "--out {output.metrics} > {log} 2>&1"
