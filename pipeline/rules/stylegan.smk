# Report 004 (experiments with an `encoder:` block, e.g. stylegan_cxr_cardiomegaly): after G is
# trained by the shared `train` rule, each stage is its own rule writing its own file, so a knob
# reruns only its stage and what reads it: train_encoder, train_ctr_segmenter, the classifier
# (train_classifier_labelled in evaluate.smk), evaluate_stylegan_generator (the generation
# evaluator + truncation sweep), invert, separate (LDA), edit, and the light assemble_stylegan
# writing results/<experiment>/metrics.json from the sections (docs/experiment-stylegan-cxr.md).


SECTIONS = "results/{experiment}/sections"
STYLEGAN_FIGURES = "results/{experiment}/figures"


rule train_encoder:
    # The CRG-style encoder (pipeline/models/stylegan2_encoder.py) by the one engine, G frozen.
    input:
        generator="models/{experiment}/model.pt",
        train=stylegan_slices("train"),
        val=stylegan_slices("val"),
    output:
        model="models/{experiment}/encoder/model.pt",
        history="models/{experiment}/encoder/history.csv",
        run="models/{experiment}/encoder/run.json",
    wildcard_constraints:
        experiment=name_pattern(STYLEGAN_EDITING_EXPERIMENTS),
    params:
        cfg=encoder_config_json,
        weights_dir=config["weights"]["dir"],
        tracking_uri=config["tracking"]["uri"],
        seed=config["seed"],
        out_dir=lambda w: f"models/{w.experiment}/encoder",
    threads: 8  # capped at --cores by Snakemake
    resources:
        **job_resources(config, "train"),
        gpu=lambda w: gpus_for(stylegan_cfg(w)["encoder"]["train"]["device"]),
    benchmark:
        "benchmarks/train_encoder/{experiment}.tsv"
    log:
        "logs/train_encoder/{experiment}.log",
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m pipeline.train --input images={input.train} --val-input images={input.val} "
        "--out {params.out_dir} --experiment {wildcards.experiment} --config-json {params.cfg:q} "
        "--weights-dir {params.weights_dir} --tracking-uri {params.tracking_uri} --seed {params.seed} > {log} 2>&1"


rule train_ctr_segmenter:
    # Heart / thorax U-Net (pipeline/evaluate/measures/segmenter.py) on the phantom's truth maps: it
    # measures the CTR of edited images; its own CTR error on held-out phantoms is in the edit section.
    input:
        train=stylegan_slices("train"),
        val=stylegan_slices("val"),
        test=stylegan_slices("test"),
    output:
        model="models/{experiment}/ctr_segmenter.pt",
        summary="models/{experiment}/ctr_segmenter.json",
    wildcard_constraints:
        experiment=name_pattern(STYLEGAN_EDITING_EXPERIMENTS),
    params:
        flags=ctr_segmenter_flags,
        intervals=stylegan_intervals,
    threads: 2
    resources:
        **job_resources(config, "train_classifier"),
        gpu=section_gpus("ctr_segmenter"),
    benchmark:
        "benchmarks/train_ctr_segmenter/{experiment}.tsv"
    log:
        "logs/train_ctr_segmenter/{experiment}.log",
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m pipeline.evaluate.measures.segmenter --train {input.train} --val {input.val} --test {input.test} "
        "--organ-names background thorax heart {params.flags} {params.intervals} "
        "--out-model {output.model} --out-json {output.summary} > {log} 2>&1"


rule evaluate_stylegan_generator:
    # G alone, by the generation evaluator (FID / KID with the Inception file, FRD, PRDC,
    # memorisation, intervals) into a section, plus the truncation sweep.
    input:
        model="models/{experiment}/model.pt",
        history="models/{experiment}/history.csv",
        run="models/{experiment}/run.json",
        classifier="models/{experiment}/classifier.pt",
        train=stylegan_slices("train"),
        val=stylegan_slices("val"),
        test=stylegan_slices("test"),
        weights=weight_inputs("inception"),
    output:
        section=f"{SECTIONS}/generation.json",
        samples="results/{experiment}/samples.npz",
        per_image="results/{experiment}/per_image.npz",
        sample_grid=f"{STYLEGAN_FIGURES}/sample_grid.png",
        noise_walk=f"{STYLEGAN_FIGURES}/noise_walk.png",
        nearest_pairs=f"{STYLEGAN_FIGURES}/nearest_pairs.png",
        curves=f"{STYLEGAN_FIGURES}/training_curves.png",
        truncation=f"{STYLEGAN_FIGURES}/truncation_sweep.png",
    wildcard_constraints:
        experiment=name_pattern(STYLEGAN_EDITING_EXPERIMENTS),
    params:
        inception=f"{config['weights']['dir']}/pt_inception-2015-12-05-6726825d.pth",
        flags=generation_evaluate_flags,
        psis=lambda w: " ".join(f"{p:g}" for p in stylegan_cfg(w)["evaluate"]["truncation_psis"]),
        seed=config["seed"],
        device=lambda w: stylegan_cfg(w)["evaluate"]["device"],
    threads: 8
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
        "(python -m pipeline.evaluate --model {input.model} --test {input.test} --train {input.train} "
        "--val {input.val} --history {input.history} --classifier {input.classifier} "
        "--inception-weights {params.inception} --run-json {input.run} {params.flags} "
        "--samples-out {output.samples} --per-image-out {output.per_image} "
        "--sample-grid {output.sample_grid} --noise-walk {output.noise_walk} "
        "--nearest-pairs {output.nearest_pairs} --training-curves {output.curves} --out {output.section} "
        "&& python -m pipeline.latent.truncation --generator {input.model} --psis {params.psis} "
        "--seed {params.seed} --device {params.device} --out {output.truncation}) > {log} 2>&1"


rule invert:
    # Encoder and latent-optimisation inversions of synthetic and real held-out (val + test) images (+ the ladder's bases).
    input:
        generator="models/{experiment}/model.pt",
        encoder="models/{experiment}/encoder/model.pt",
        val=stylegan_slices("val"),
        test=stylegan_slices("test"),
        ladder=lambda w: f"data/slices/{stylegan_dataset(w)}/ctr_ladder.npz",
        weights=weight_inputs("vgg19"),
    output:
        section=f"{SECTIONS}/inversion.json",
        codes="results/{experiment}/codes.npz",
        figure=f"{STYLEGAN_FIGURES}/reconstructions.png",
    wildcard_constraints:
        experiment=name_pattern(STYLEGAN_EDITING_EXPERIMENTS),
    params:
        flags=inversion_flags,
        intervals=stylegan_intervals,
        pretrained=config["weights"]["pretrained"],
        weights_dir=config["weights"]["dir"],
    threads: 2
    resources:
        gpu=section_gpus("inversion"),
    benchmark:
        "benchmarks/invert/{experiment}.tsv"
    log:
        "logs/invert/{experiment}.log",
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m pipeline.latent.invert --generator {input.generator} --encoder {input.encoder} "
        "--val {input.val} --test {input.test} --ladder {input.ladder} {params.flags} {params.intervals} "
        "--pretrained {params.pretrained} --weights-dir {params.weights_dir} "
        "--out-json {output.section} --codes-out {output.codes} --figure {output.figure} > {log} 2>&1"


rule separate:
    # LDA on the optimised test codes: separation on the fitting and the held-out parts.
    input:
        codes="results/{experiment}/codes.npz",
    output:
        section=f"{SECTIONS}/separation.json",
        direction="results/{experiment}/lda_direction.npz",
        figure=f"{STYLEGAN_FIGURES}/lda_projections.png",
    wildcard_constraints:
        experiment=name_pattern(STYLEGAN_EDITING_EXPERIMENTS),
    params:
        flags=separation_flags,
        intervals=stylegan_intervals,
    benchmark:
        "benchmarks/separate/{experiment}.tsv"
    log:
        "logs/separate/{experiment}.log",
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m pipeline.latent.separation --codes {input.codes} {params.flags} {params.intervals} "
        "--out-json {output.section} --direction-out {output.direction} --figure {output.figure} > {log} 2>&1"


rule edit:
    # Cardiomegaly edits of held-out healthy codes, measured (CTR, classifier, identity).
    input:
        generator="models/{experiment}/model.pt",
        encoder="models/{experiment}/encoder/model.pt",
        codes="results/{experiment}/codes.npz",
        direction="results/{experiment}/lda_direction.npz",
        ladder=lambda w: f"data/slices/{stylegan_dataset(w)}/ctr_ladder.npz",
        test=stylegan_slices("test"),
        segmenter="models/{experiment}/ctr_segmenter.pt",
        classifier="models/{experiment}/classifier.pt",
    output:
        section=f"{SECTIONS}/edit.json",
        sequence=f"{STYLEGAN_FIGURES}/edit_sequence.png",
        curves=f"{STYLEGAN_FIGURES}/edit_curves.png",
    wildcard_constraints:
        experiment=name_pattern(STYLEGAN_EDITING_EXPERIMENTS),
    params:
        flags=edit_flags,
        intervals=stylegan_intervals,
    threads: 2
    resources:
        gpu=section_gpus("edit"),
    benchmark:
        "benchmarks/edit/{experiment}.tsv"
    log:
        "logs/edit/{experiment}.log",
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m pipeline.latent.edit --generator {input.generator} --encoder {input.encoder} "
        "--codes {input.codes} --direction {input.direction} --ladder {input.ladder} --test {input.test} "
        "--segmenter {input.segmenter} --classifier {input.classifier} {params.flags} {params.intervals} "
        "--out-json {output.section} --sequence-figure {output.sequence} --curves-figure {output.curves} > {log} 2>&1"


rule assemble_stylegan:
    # Light: reads the sections, validates metrics.json, logs the headline + figures into G's MLflow run.
    input:
        generation=f"{SECTIONS}/generation.json",
        training_run="models/{experiment}/run.json",
        encoder_run="models/{experiment}/encoder/run.json",
        encoder_history="models/{experiment}/encoder/history.csv",
        inversion=f"{SECTIONS}/inversion.json",
        separation=f"{SECTIONS}/separation.json",
        edit=f"{SECTIONS}/edit.json",
        segmenter="models/{experiment}/ctr_segmenter.json",
        classifier="models/{experiment}/classifier.json",
        figures=[f"{STYLEGAN_FIGURES}/{name}.png" for name in (
            "sample_grid", "truncation_sweep", "reconstructions", "lda_projections", "edit_sequence", "edit_curves")],
    output:
        metrics=report(
            "results/{experiment}/metrics.json",
            caption="../../report/metrics.rst",
            category="Evaluation",
            subcategory="{experiment}",
        ),
    wildcard_constraints:
        experiment=name_pattern(STYLEGAN_EDITING_EXPERIMENTS),
    params:
        intervals=stylegan_intervals,
        tracking_uri=config["tracking"]["uri"],
    benchmark:
        "benchmarks/assemble/{experiment}.tsv"
    log:
        "logs/assemble/{experiment}.log",
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m pipeline.evaluate.tasks.editing --experiment {wildcards.experiment} --generation {input.generation} "
        "--training-run {input.training_run} --encoder-run {input.encoder_run} "
        "--encoder-history {input.encoder_history} --inversion {input.inversion} --separation {input.separation} "
        "--edit {input.edit} --segmenter {input.segmenter} --classifier {input.classifier} "
        "--figures {input.figures} {params.intervals} --tracking-uri {params.tracking_uri} "
        "--out {output.metrics} > {log} 2>&1"
