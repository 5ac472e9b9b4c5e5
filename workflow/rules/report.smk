# The claims of every experiment at this scale in one table (CLAIMS.md), and the same rows for
# programs (claims.json).


# A part of a scale built alone (make replicate PART=<experiment>) adds its claims to those of the
# experiments whose results the scale already holds (Plan.claims_experiments).
rule claims:
    input:
        configs=[f"{config['experiments_dir']}/{e}/config.yaml" for e in PLAN.claims_experiments()],
        plans=[f"{config['experiments_dir']}/{e}/plan.yaml" for e in PLAN.claims_experiments()],
        tables=PLAN.claims_inputs(),
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
