# Data preparation, once per data set named by some run (only FineWeb needs one). The manifest is
# written last; shards already finished are never rewritten, so a rerun continues where it stopped.


rule prepare_data:
    input:
        lambda w: PLAN.experiment_config(PLAN.dataset_experiment[w.dataset]),
    output:
        f"{DATA}/{{dataset}}/manifest.json",
    log:
        f"{LOGS}/data/{{dataset}}.log",
    params:
        python=PYTHON,
        out=lambda w, output: os.path.dirname(output[0]),
    shell:
        logged(
            "{params.python} -m replication.tasks.fineweb.prepare {input} --dataset {wildcards.dataset} "
            "--out {params.out}"
        )
