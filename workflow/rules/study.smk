# A scale's study (scales.<scale>.study of an experiment file): the runs of its arms, each a scale of
# its own (<scale>_study_<arm>), and the scale's own runs, into tidy CSVs, two figures and a README
# under results/<scale>/study/<experiment>/. Not part of `all`: `make study` asks for the `study` target.


rule study_report:
    input:
        config=lambda w: PLAN.experiment_config(w.experiment),
        summaries=lambda w: PLAN.study_inputs(w.experiment),
    output:
        [f"{config['results_dir']}/{{scale}}/study/{{experiment}}/{name}" for name in STUDY_FILES],
    log:
        f"{LOGS}/{{experiment}}/{{scale}}/study.log",
    params:
        out=lambda w: PLAN.study_dir(w.experiment),
    shell:
        logged(
            "{PYTHON} -m replication.reporting.study {input.config} --scale {wildcards.scale} --runs {RUNS} "
            "--out {params.out}"
        )


rule study:
    input:
        [output for experiment in PLAN.studies() for output in PLAN.study_outputs(experiment)],
