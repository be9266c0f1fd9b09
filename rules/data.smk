rule prepare_dataset:
    output:
        train=f"{DATA}/train.jsonl",
        validation=f"{DATA}/validation.jsonl",
        test=f"{DATA}/test.jsonl",
        report=f"{DATA}/data_report.json",
    log:
        f"{LOGS}/prepare_dataset.log",
    params:
        **RULE_PARAMS["prepare_dataset"],
    conda:
        "../envs/leanhpo.yaml"
    script:
        "../scripts/prepare_dataset.py"


rule length_report:
    input:
        train=f"{DATA}/train.jsonl",
        validation=f"{DATA}/validation.jsonl",
        test=f"{DATA}/test.jsonl",
    output:
        report=report(
            f"{DATA}/length_report.json",
            caption="../docs/report/length_report.rst",
            category="Data",
        ),
    log:
        f"{LOGS}/length_report.log",
    params:
        **RULE_PARAMS["length_report"],
    conda:
        "../envs/leanhpo.yaml"
    script:
        "../scripts/length_report.py"
