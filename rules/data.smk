rule prepare_dataset:
    output:
        train=f"{DATA}/train.jsonl",
        validation=f"{DATA}/validation.jsonl",
        test=f"{DATA}/test.jsonl",
        report=f"{DATA}/data_report.json",
    log:
        f"{LOGS}/prepare_dataset.log",
    params:
        data=canonical(config["data"]),
    conda:
        "../envs/leanhpo.yaml"
    script:
        "../scripts/prepare_dataset.py"
