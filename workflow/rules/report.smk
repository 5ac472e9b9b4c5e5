# The claims of every experiment at this scale in one table.


rule claims:
    input:
        configs=[PLAN.experiment_config(e) for e in PLAN.specs],
        summaries=[f"{PLAN.results_dir(e)}/summary.csv" for e in PLAN.specs],
    output:
        PLAN.claims_output(),
    log:
        f"{LOGS}/claims/{PLAN.scale}.log",
    params:
        python=PYTHON,
        scale=PLAN.scale,
        results=lambda w, output: os.path.dirname(output[0]),
    shell:
        logged(
            "{params.python} -m replication.reporting.claims {input.configs} --scale {params.scale} "
            "--results {params.results} --out {output}"
        )
