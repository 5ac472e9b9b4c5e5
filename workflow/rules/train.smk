# One folder per run: RUNS/RUN/, RUN being replication.runtime.record.RunId.pattern() (the run's
# wildcards). The resolved config is written first, with the job's threads as train.threads (the
# thread count changes a CPU run's numbers, so the run's config holds it); training writes
# metrics.jsonl and checkpoints as it goes and summary.json last, so a failed or interrupted job
# leaves no output Snakemake would take as finished, and the checkpoint (not an output) survives for
# the rerun to resume from.


# A matched-dose control (replication.science.methods, Method.matches) is configured after its gated
# run of the same seed has finished: its config holds that run's phases, moved (--schedule-from).
rule configure_run:
    input:
        experiment=lambda w: PLAN.experiment_config(w.experiment),
        gated=lambda w: PLAN.gated_summary(w.experiment, w.scale, w.method, w.seed),
    output:
        f"{RUNS}/{RUN}/config.yaml",
    log:
        f"{LOGS}/{RUN}/configure.log",
    params:
        python=PYTHON,
        threads=lambda w: PLAN.job(w.experiment, "threads_per_run"),
        schedule=lambda w: PLAN.schedule_option(w.experiment, w.scale, w.method, w.seed),
    shell:
        logged(
            "{params.python} -m replication.training.configure {input.experiment} --scale {wildcards.scale} "
            "--method {wildcards.method} --seed {wildcards.seed} --threads {params.threads} "
            "{params.schedule} --out {output} --dag --force"
        )


# Two rules with one command: `train` for the runs of experiments that need no GPU, `train_gpu` for
# the others (gpus_per_run > 0), so that a cluster profile can give each kind its own partition, CPUs,
# memory and time (profiles/slurm). Every job runs under replication.dag.devices (PLAN.launcher),
# which gives it its own GPUs on this machine, or none.
for _name, _gpu in (("train", False), ("train_gpu", True)):

    rule:
        name:
            _name
        input:
            config=f"{RUNS}/{RUN}/config.yaml",
            data=lambda w: PLAN.data_inputs(w.experiment, w.scale, w.method, w.seed),
        output:
            f"{RUNS}/{RUN}/summary.json",
        log:
            f"{LOGS}/{RUN}/train.log",
        wildcard_constraints:
            experiment=PLAN.experiments_pattern(gpu=_gpu),
        threads: lambda w: PLAN.job(w.experiment, "threads_per_run")
        resources:
            gpu=lambda w: PLAN.job(w.experiment, "gpus_per_run"),
        params:
            launcher=lambda w: PLAN.launcher(PYTHON, w.experiment),
            data=DATA,
            compile_cache=COMPILE_CACHE,
        shell:
            logged(
                "TORCHINDUCTOR_CACHE_DIR={params.compile_cache} {params.launcher} {input.config} "
                "--data-root {params.data} --progress lines"
            )
