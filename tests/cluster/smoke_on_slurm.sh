#!/usr/bin/env bash
# The smoke DAG through SLURM with profiles/slurm, checked against the same DAG run locally; then a
# job that fails on SLURM, and the rerun that resumes. Runs inside tests/cluster/slurm.sh (make
# test-slurm), which provides the one-node cluster, SLURM_CONF and SLURM_JOBCOMP_FILE.
#
# The profile is the paper scale's: account and partitions to fill in, an 8-GPU node per training
# job. Here the account and partition are this cluster's and the resources fit its one small node,
# given on the command line as a user of another scale would give them.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
: "${SLURM_JOBCOMP_FILE:?run me through tests/cluster/slurm.sh}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
mkdir -p .smoke
work=$(realpath "$(mktemp -d .smoke/slurm-XXXXXX)")
echo "smoke_on_slurm: working in $work" >&2
paths() { echo "runs_dir=$1/runs results_dir=$1/results logs_dir=$1/logs data_dir=$1/data"; }
planned() {  # the jobs a dry run plans, less the target rule `all`, which runs in Snakemake itself
    slurm_snakemake "$@" --dry-run --quiet rules 2>/dev/null \
        | awk '$1 == "total" {exit} $2 ~ /^[0-9]+$/ && $1 != "all" {n += $2} END {print n + 0}'
}
finished() {  # SLURM jobs completed so far, from the cluster's job log
    local n
    n=$(grep -c "JobState=COMPLETED" "$SLURM_JOBCOMP_FILE" 2>/dev/null) || true
    echo "${n:-0}"
}
slurm_snakemake() {
    # the account and partition of this cluster; resources that fit its node; job states from squeue
    # (this cluster keeps no accounting database for sacct) checked every few seconds
    "$BIN/snakemake" --profile profiles/slurm --configfile config/smoke.yaml \
        --slurm-status-command squeue --slurm-init-seconds-before-status-checks 5 \
        --seconds-between-status-checks 5 \
        --default-resources slurm_account=local slurm_partition=main runtime=30 mem_mb=1500 cpus_per_task=1 \
        --set-resources train:mem_mb=3000 train:cpus_per_task=1 prepare_data:mem_mb=3000 "$@"
}

# 1. the reference: the same DAG on this machine
start=$SECONDS
"$BIN/snakemake" --cores 2 --configfile config/smoke.yaml --config $(paths "$work/local") --quiet rules
echo "smoke_on_slurm: local DAG in $((SECONDS - start)) s" >&2

# 2. every job an sbatch job
planned=$(planned --config $(paths "$work/slurm"))
before=$(finished)
start=$SECONDS
slurm_snakemake --config $(paths "$work/slurm")
ran=$(( $(finished) - before ))
echo "smoke_on_slurm: SLURM DAG in $((SECONDS - start)) s, $ran SLURM jobs completed, $planned planned" >&2
[ "$ran" = "$planned" ] || { echo "error: $ran SLURM jobs completed, the DAG planned $planned" >&2; exit 1; }
"$BIN/python" -m replication.dag.plan config/smoke.yaml $(paths "$work/slurm")
claims=$(cd "$work/local/results" && find . -name CLAIMS.md)
cmp "$work/local/results/$claims" "$work/slurm/results/$claims" \
    || { echo "error: CLAIMS.md differs between the local and the SLURM run" >&2; exit 1; }
# a table's throughput row measures the machine at that moment, not the computation: left out, with
# the column padding it sets
values() { grep -v "tokens per second" "$1" | sed 's/  */ /g; s/--*/-/g'; }
for table in $(cd "$work/local/results" && find . -name table.md | sort); do
    cmp <(values "$work/local/results/$table") <(values "$work/slurm/results/$table") \
        || { echo "error: $table differs between the local and the SLURM run" >&2; exit 1; }
done
echo "smoke_on_slurm: CLAIMS.md is byte-identical to the local run's, every table.md but its throughput row too" >&2

# 3. a job that fails on SLURM: a copy of the experiments whose FineWeb sample is not where it says (a
# config error would stop the DAG before any job: every run config is resolved first)
cp -r experiments "$work/experiments"
sample=experiments/fineweb_pretrain/sample/fineweb_sample.jsonl.gz
sed -i "s|path: $sample|path: experiments/fineweb_pretrain/sample/absent.jsonl.gz|" "$work/experiments/fineweb_pretrain/config.yaml"
grep -q "absent.jsonl.gz" "$work/experiments/fineweb_pretrain/config.yaml" || { echo "error: the fault was not injected" >&2; exit 1; }
broken="$(paths "$work/fail") experiments_dir=$work/experiments"
if slurm_snakemake --config $broken >"$work/fail.out" 2>&1; then
    echo "error: the DAG without its FineWeb sample succeeded" >&2; exit 1
fi
grep -q "no source can be read here" "$work/fail.out" \
    || { echo "error: the terminal does not show the failed job's reason; see $work/fail.out" >&2; exit 1; }
echo "smoke_on_slurm: the failed job's reason reached the terminal: $(grep -m1 -o "data set .*no source can be read here" "$work/fail.out")" >&2
# fixed, the rerun runs only what did not finish
sed -i "s|path: experiments/fineweb_pretrain/sample/absent.jsonl.gz|path: $sample|" "$work/experiments/fineweb_pretrain/config.yaml"
remaining=$(planned --config $broken)
total=$(planned --config $(paths "$work/empty") experiments_dir="$work/experiments")
before=$(finished)
slurm_snakemake --config $broken
rerun=$(( $(finished) - before ))
echo "smoke_on_slurm: the rerun ran $rerun jobs of the DAG's $total ($remaining left by the failure)" >&2
[ "$rerun" = "$remaining" ] && [ "$remaining" -lt "$total" ] \
    || { echo "error: the rerun redid finished jobs" >&2; exit 1; }
rm -rf "$work"
echo "smoke_on_slurm: passed" >&2
