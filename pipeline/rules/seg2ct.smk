# Report 003 (experiment seg2ct_style): chest CT from a six-class label map with another patient's
# texture organ by organ. Training is the shared `train` rule (pipeline/rules/train.smk); this file
# adds the segmenter that reads maps back from images (its own rule: a new GAN knob never
# retrains it) and the evaluation, which also generates the images from perturbed training maps
# (pipeline/generate_from_maps.py) so that a new style weight reruns training and evaluation only.


rule train_segmenter:
    # U-Net image -> organ map on the real training slices, selected on val, its Dice on val and
    # test in segmenter.json (so a low Dice of generated images can be blamed on the generator).
    input:
        train=map_to_image_slices("train"),
        val=map_to_image_slices("val"),
        test=map_to_image_slices("test"),
    output:
        model="models/{experiment}/segmenter.pt",
        summary="models/{experiment}/segmenter.json",
    wildcard_constraints:
        experiment=name_pattern(MAP_TO_IMAGE_EXPERIMENTS),
    params:
        flags=segmenter_flags,
    threads: 2
    resources:
        **job_resources(config, "train_classifier"),
        gpu=section_gpus("segmenter"),
    benchmark:
        "benchmarks/train_segmenter/{experiment}.tsv"
    log:
        "logs/train_segmenter/{experiment}.log",
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m pipeline.evaluate.measures.segmenter --train {input.train} --val {input.val} --test {input.test} "
        "{params.flags} --out-model {output.model} --out-json {output.summary} > {log} 2>&1"


rule evaluate_map_to_image:
    # Distribution (FID/KID with Inception weights, FRD, FRD per organ, PRDC), Dice per organ of
    # generated images (test maps and perturbed maps), style per organ, diversity over z,
    # memorisation (pipeline/evaluate/tasks/map_to_image.py via `python -m pipeline.evaluate`, which
    # dispatches on the model's task). metrics.json last.
    input:
        model="models/{experiment}/model.pt",
        run="models/{experiment}/run.json",
        segmenter="models/{experiment}/segmenter.pt",
        train=map_to_image_slices("train"),
        test=map_to_image_slices("test"),
        weights=weight_inputs("inception"),
    output:
        metrics=report(
            "results/{experiment}/metrics.json",
            caption="../../report/metrics.rst",
            category="Evaluation",
            subcategory="{experiment}",
        ),
        samples="results/{experiment}/samples.npz",
        generated="results/{experiment}/generated/perturbed.npz",
        panels="results/{experiment}/figures/panels.png",
        perturbed="results/{experiment}/figures/perturbed.png",
        z_draws="results/{experiment}/figures/z_draws.png",
        histograms="results/{experiment}/figures/organ_histograms.png",
    wildcard_constraints:
        experiment=name_pattern(MAP_TO_IMAGE_EXPERIMENTS),
    params:
        inception=f"{config['weights']['dir']}/pt_inception-2015-12-05-6726825d.pth",
        flags=map_to_image_flags,
        figures_dir=lambda w: f"results/{w.experiment}/figures",
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
        "--segmenter {input.segmenter} --inception-weights {params.inception} --run-json {input.run} "
        "{params.flags} --samples-out {output.samples} --generated-out {output.generated} "
        "--figures-dir {params.figures_dir} --out {output.metrics} > {log} 2>&1"
