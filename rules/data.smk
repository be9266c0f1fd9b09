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
        # Only what the tokenisation depends on: a change of heads or training leaves it be.
        model=canonical(
            {
                k: config["model"][k]
                for k in (
                    "id",
                    "revision",
                    "max_length",
                    "long_posts",
                    "window_stride",
                    "max_windows",
                    "input_format",
                )
            }
        ),
    conda:
        "../envs/leanhpo.yaml"
    script:
        "../scripts/length_report.py"
