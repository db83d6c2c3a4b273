# Stages 7-8: metrics (FID / KID / FRD / SSIM / paired metrics / classifier scores / intervals) and
# figures, logged into the training run in MLflow. metrics.json is written last, so asking for it builds the figures.


rule preprocessing_panel:
    input:
        raw="data/raw/{dataset}",
        windowed=panel_stage("windowed"),
        registered=panel_stage("registered"),
        masked=panel_stage("masked"),
    output:
        report(
            "results/{experiment}/figures/preprocessing_{dataset}.png",
            caption="../../report/preprocessing_panel.rst",
            category="Preprocessing",
            subcategory="{dataset}",
        ),
    params:
        raw_path=panel_raw_path,
        modality=lambda w: modality(w.dataset),
        subject=panel_subject,
        windowed=panel_stage("windowed", as_input=False),
        registered=panel_stage("registered", as_input=False),
        masked=lambda w: f"--masked {panel_stage('masked', as_input=False)(w)}" if final_stage(w.dataset) == "masked" else "",
    log:
        "logs/figures/{experiment}/preprocessing_{dataset}.log",
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m pipeline.figures preprocessing --raw {params.raw_path:q} "
        "--modality {params.modality} --windowed {params.windowed} "
        "--registered {params.registered} {params.masked} --subject {params.subject} "
        "--out {output} > {log} 2>&1"


rule evaluate:
    # Translation experiments (CycleGAN); generators: rule evaluate_generation.
    input:
        unpack(evaluate_inputs),
    output:
        metrics=report(
            "results/{experiment}/metrics.json",
            caption="../../report/metrics.rst",
            category="Evaluation",
            subcategory="{experiment}",
        ),
        samples="results/{experiment}/samples.npz",
        per_image="results/{experiment}/per_image.npz",
        sample_grid="results/{experiment}/figures/sample_grid.png",
        difference_maps="results/{experiment}/figures/difference_maps.png",
        histograms="results/{experiment}/figures/histograms.png",
        metrics_table="results/{experiment}/figures/metrics_table.png",
        triplets=report(
            "results/{experiment}/figures/triplets.png",
            caption="../../report/triplets.rst",
            category="Evaluation",
            subcategory="{experiment}",
        ),
        losses=report(
            "results/{experiment}/figures/loss_curves.png",
            caption="../../report/loss_curves.rst",
            category="Training",
            subcategory="{experiment}",
        ),
    params:
        inception=f"{config['weights']['dir']}/pt_inception-2015-12-05-6726825d.pth",
        ct_window=ct_window_for_metrics(),
        flags=evaluate_flags,
    wildcard_constraints:
        experiment=name_pattern(TRANSLATION_EXPERIMENTS),
    threads: 8  # capped at --cores by Snakemake: on a laptop training runs alone
    resources:
        **job_resources(config, "evaluate"),
        gpu=section_gpus("evaluate"),
    benchmark:
        "benchmarks/evaluate/{experiment}.tsv"
    log:
        "logs/evaluate/{experiment}.log",
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m pipeline.evaluate --model {input.model} --test-a {input.test_a} "
        "--test-b {input.test_b} --train-a {input.train_a} --train-b {input.train_b} "
        "--history {input.history} --run-json {input.run} "
        "--inception-weights {params.inception} {params.ct_window} "
        "{params.flags} --extra-figures {input.panels} {input.preprocessing_qc} "
        "--samples-out {output.samples} --triplets {output.triplets} --loss-curves {output.losses} "
        "--classifier {input.classifier} --per-image-out {output.per_image} "
        "--sample-grid {output.sample_grid} --difference-maps {output.difference_maps} "
        "--histograms {output.histograms} --metrics-table {output.metrics_table} "
        "--out {output.metrics} > {log} 2>&1"


rule train_classifier:
    # Real domain a vs real domain b, for the classifier scores of translations. Its own rule,
    # so evaluation knobs never retrain it and training the GAN never invalidates it.
    input:
        train_a=lambda w: domain_slices("train")(w)["a"],
        train_b=lambda w: domain_slices("train")(w)["b"],
        val_a=lambda w: domain_slices("val")(w)["a"],
        val_b=lambda w: domain_slices("val")(w)["b"],
        test_a=lambda w: domain_slices("test")(w)["a"],
        test_b=lambda w: domain_slices("test")(w)["b"],
    output:
        model="models/{experiment}/classifier.pt",
        summary="models/{experiment}/classifier.json",
    wildcard_constraints:
        experiment=name_pattern(TRANSLATION_EXPERIMENTS),
    params:
        flags=classifier_flags,
    threads: 2
    resources:
        **job_resources(config, "train_classifier"),
        gpu=section_gpus("classifier"),
    benchmark:
        "benchmarks/train_classifier/{experiment}.tsv"
    log:
        "logs/train_classifier/{experiment}.log",
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m pipeline.evaluate.measures.classifier --train-a {input.train_a} --train-b {input.train_b} "
        "--val-a {input.val_a} --val-b {input.val_b} --test-a {input.test_a} --test-b {input.test_b} "
        "{params.flags} --out-model {output.model} --out-json {output.summary} > {log} 2>&1"


rule train_classifier_labelled:
    # Report 002's classifier: real healthy vs haemorrhage slices (labels 0 / 1) of a generation
    # experiment's dataset, scoring the generated slices in evaluate_generation (and report 004's
    # healthy vs cardiomegaly classifier scoring the edits). Its own rule, as for the translation experiments.
    input:
        train=lambda w: input_slices("train")(w)["train_images"],
        val=lambda w: input_slices("val")(w)["val_images"],
        test=lambda w: input_slices("test")(w)["test_images"],
    output:
        model="models/{experiment}/classifier.pt",
        summary="models/{experiment}/classifier.json",
    wildcard_constraints:
        experiment=name_pattern(GENERATION_EXPERIMENTS + STYLEGAN_EDITING_EXPERIMENTS),
    params:
        flags=labelled_classifier_flags,
    threads: 2
    resources:
        **job_resources(config, "train_classifier"),
        gpu=section_gpus("classifier"),
    benchmark:
        "benchmarks/train_classifier/{experiment}.tsv"
    log:
        "logs/train_classifier/{experiment}.log",
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m pipeline.evaluate.measures.classifier --train {input.train} --val {input.val} --test {input.test} "
        "{params.flags} --out-model {output.model} --out-json {output.summary} > {log} 2>&1"


rule evaluate_generation:
    # Generators (DCGAN, cGAN): distribution measures, report 002's D(G(z)) and classifier scores,
    # train-on-synthetic, memorisation (pipeline/evaluate/tasks/generation.py, reached through
    # `python -m pipeline.evaluate`, which dispatches on the model's task). metrics.json last.
    input:
        model="models/{experiment}/model.pt",
        history="models/{experiment}/history.csv",
        run="models/{experiment}/run.json",
        classifier="models/{experiment}/classifier.pt",
        train=lambda w: input_slices("train")(w)["train_images"],
        val=lambda w: input_slices("val")(w)["val_images"],
        test=lambda w: input_slices("test")(w)["test_images"],
        weights=weight_inputs("inception"),
    output:
        metrics=report(
            "results/{experiment}/metrics.json",
            caption="../../report/metrics.rst",
            category="Evaluation",
            subcategory="{experiment}",
        ),
        samples="results/{experiment}/samples.npz",
        per_image="results/{experiment}/per_image.npz",
        sample_grid="results/{experiment}/figures/sample_grid.png",
        noise_walk="results/{experiment}/figures/noise_walk.png",
        nearest_pairs="results/{experiment}/figures/nearest_pairs.png",
        curves=report(
            "results/{experiment}/figures/training_curves.png",
            caption="../../report/loss_curves.rst",
            category="Training",
            subcategory="{experiment}",
        ),
    wildcard_constraints:
        experiment=name_pattern(GENERATION_EXPERIMENTS),
    params:
        inception=f"{config['weights']['dir']}/pt_inception-2015-12-05-6726825d.pth",
        flags=generation_evaluate_flags,
    threads: 8  # capped at --cores by Snakemake
    resources:
        **job_resources(config, "evaluate"),
        gpu=section_gpus("evaluate"),
    benchmark:
        "benchmarks/evaluate/{experiment}.tsv"
    log:
        "logs/evaluate/{experiment}.log",
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m pipeline.evaluate --model {input.model} --test {input.test} --train {input.train} "
        "--val {input.val} --history {input.history} --classifier {input.classifier} "
        "--inception-weights {params.inception} --run-json {input.run} {params.flags} "
        "--samples-out {output.samples} --per-image-out {output.per_image} "
        "--sample-grid {output.sample_grid} --noise-walk {output.noise_walk} "
        "--nearest-pairs {output.nearest_pairs} --training-curves {output.curves} "
        "--out {output.metrics} > {log} 2>&1"


rule unknown_experiment:
    # results/<name>/metrics.json for a name params.yaml does not define: stop while planning,
    # naming the known experiments, instead of Snakemake's bare "no rule to produce" message.
    input:
        unknown_experiment,
    output:
        "results/{name}/metrics.json",
    wildcard_constraints:
        name="(?!(?:{})/)[^/]+".format("|".join(re.escape(e) for e in config["experiments"])),
    log:
        "logs/unknown_experiment/{name}.log",
    conda:
        "../../envs/train.yaml"
    shell:
        "exit 1"
