# A scale's study (scales.<scale>.study of an experiment file): the runs of its arms, each a scale of
# its own (<scale>_study_<arm>), and the scale's own runs it compares with, into tidy CSVs, figures and
# a README under results/<scale>/study/<experiment>/. One rule per experiment with a study, since the
# files depend on the study's parts (replication.dag.plan.study_files). Not part of `all`:
# `make study` asks for the `study` target.


for _experiment in PLAN.studies():

    rule:
        name:
            f"study_report_{_experiment}"
        input:
            config=PLAN.experiment_config(_experiment),
            summaries=PLAN.study_inputs(_experiment),
        output:
            PLAN.study_outputs(_experiment),
        log:
            f"{LOGS}/{_experiment}/{PLAN.scale}/study.log",
        params:
            python=PYTHON,
            scale=PLAN.scale,
            runs=lambda w, input: str(runs_root(input.summaries[0])),
            out=lambda w, output: os.path.dirname(output[0]),
        shell:
            logged(
                "{params.python} -m replication.reporting.study {input.config} --scale {params.scale} "
                "--runs {params.runs} --out {params.out}"
            )


rule study:
    input:
        [output for experiment in PLAN.studies() for output in PLAN.study_outputs(experiment)],
