# Runs -> tidy CSVs and table.md per experiment, then that experiment's figures from the CSVs alone.


rule aggregate:
    input:
        config=lambda w: PLAN.experiment_config(w.experiment),
        plan=lambda w: PLAN.analysis_plan(w.experiment),
        summaries=lambda w: PLAN.summaries(w.experiment),
    output:
        [f"{config['results_dir']}/{{scale}}/{{experiment}}/{name}" for name in TABLE_FILES],
    # only the chosen experiments: the committed tables of the others are read as they are (claims)
    wildcard_constraints:
        experiment="|".join(PLAN.specs),
    log:
        f"{LOGS}/{{experiment}}/{{scale}}/aggregate.log",
    params:
        python=PYTHON,
        runs=lambda w, input: str(runs_root(input.summaries[0])),
        out=lambda w, output: os.path.dirname(output[0]),
        methods=lambda w: " ".join(PLAN.methods(w.experiment)),
        seeds=lambda w: " ".join(map(str, PLAN.seeds(w.experiment))),
    shell:
        logged(
            "{params.python} -m replication.reporting.aggregate {input.config} --scale {wildcards.scale} "
            "--runs {params.runs} --out {params.out} --methods {params.methods} --seeds {params.seeds}"
        )


for _experiment in PLAN.specs:

    rule:
        name:
            f"figures_{_experiment}"
        input:
            config=PLAN.experiment_config(_experiment),
            tables=PLAN.table_outputs(_experiment),
        output:
            PLAN.figure_outputs(_experiment),
        log:
            f"{LOGS}/{_experiment}/{PLAN.scale}/figures.log",
        params:
            python=PYTHON,
            results=lambda w, input: os.path.dirname(input.tables[0]),
        shell:
            logged("{params.python} -m replication.reporting.figures {input.config} --results {params.results}")
