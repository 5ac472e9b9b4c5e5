# The claims of every experiment at this scale in one table (CLAIMS.md), and the same rows for
# programs (claims.json).


rule claims:
    input:
        configs=[PLAN.experiment_config(e) for e in PLAN.specs],
        plans=[PLAN.analysis_plan(e) for e in PLAN.specs],
        tables=[t for e in PLAN.specs for t in PLAN.table_outputs(e) if not t.endswith(("curves.csv", ".md"))],
    output:
        md=PLAN.claims_output(),
        json=os.path.join(os.path.dirname(PLAN.claims_output()), "claims.json"),
    log:
        f"{LOGS}/claims/{PLAN.scale}.log",
    params:
        python=PYTHON,
        scale=PLAN.scale,
        results=lambda w, output: os.path.dirname(output.md),
    shell:
        logged(
            "{params.python} -m replication.reporting.claims {input.configs} --scale {params.scale} "
            "--results {params.results} --out {output.md} --json {output.json}"
        )
