# Preprocessing QC, per dataset: the registration table (every subject's similarity before and
# after, Jacobian range, status and reason, failed first) and a contact sheet of every subject at
# each stage (mid-axial, display convention). The masked stage exists only for CT datasets.

rule registration_qc_table:
    input:
        raw="data/raw/{dataset}",  # the subject list comes from its manifest
        registered=subject_dir("registered", "{dataset}"),
        reference="data/registered/{dataset}/reference.json",
    output:
        report(
            "data/registered/{dataset}/qc.csv",
            caption="../../report/registration_qc.rst",
            category="Preprocessing",
            subcategory="{dataset}",
        ),
    params:
        qc=lambda w, input: [  # derived: see register_tasks
            subject_file("registered", w.dataset, s, ".qc.json") for s in subjects(w.dataset)],
    log:
        "logs/qc/{dataset}/registration_table.log",
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m pipeline.preprocess.qc registration-table --qc {params.qc} "
        "--reference-json {input.reference} --out {output} > {log} 2>&1"


rule stage_contact_sheet:
    input:
        raw="data/raw/{dataset}",  # the subject list comes from its manifest
        volumes=stage_volumes,
    output:
        report(
            "data/{stage}/{dataset}/contact_sheet.png",
            caption="../../report/contact_sheet.rst",
            category="Preprocessing",
            subcategory="{dataset}",
        ),
    wildcard_constraints:
        stage="windowed|registered|masked",
    params:
        volumes=stage_volume_files,
        title=lambda w: f"{w.dataset}: {w.stage}",
    log:
        "logs/qc/{dataset}/{stage}_contact_sheet.log",
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m pipeline.preprocess.qc contact-sheet --volumes {params.volumes} --out {output} "
        "--title {params.title:q} > {log} 2>&1"
