# Data preparation, once per data set named by some run (only FineWeb needs one). The manifest is
# written last; after each finished shard the command records its progress in the output folder, so a
# rerun keeps the finished shards and continues from the last one. It tokenizes with the CPU threads the
# config gives a training job of the data set's experiment (threads_per_run), Snakemake's --cores at most.


rule prepare_data:
    input:
        lambda w: PLAN.experiment_config(PLAN.dataset_experiment[w.dataset]),
    output:
        f"{DATA}/{{dataset}}/manifest.json",
    log:
        f"{LOGS}/data/{{dataset}}.log",
    threads: lambda w: PLAN.job(PLAN.dataset_experiment[w.dataset], "threads_per_run")
    params:
        python=PYTHON,
        out=lambda w, output: os.path.dirname(output[0]),
    shell:
        logged(
            "{params.python} -m replication.tasks.fineweb.prepare {input} --dataset {wildcards.dataset} "
            "--out {params.out} --threads {threads}"
        )
