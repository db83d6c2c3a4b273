# Reader study of an experiment (pipeline/reader_study; docs/reader-study.md): reader_study.n_per_class
# held-out real and as many generated images, drawn with the recorded seed, rendered alike and
# shuffled into one self-contained study.html; key.json is written beside it, never into it.
# Scoring needs the readers' answers, so it runs by hand: python -m pipeline.reader_study score.

rule reader_study:
    input:
        unpack(reader_study_inputs),
    output:
        directory("results/{experiment}/reader_study"),
    params:
        flags=reader_study_flags,
        # Only pick best_by_discriminator reads it; training writes it beside model.pt (not a declared output).
        checkpoint=lambda w: f"models/{w.experiment}/checkpoint.pt",
    log:
        "logs/reader_study/{experiment}.log",
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m pipeline.reader_study make {wildcards.experiment} --model {input.model} "
        "--checkpoint {params.checkpoint} {params.flags} --out {output} > {log} 2>&1"
