#!/usr/bin/env bash
# The cluster path on a real Slurm, not a mock (Debian/Ubuntu, as root; about 3-6 minutes).
#
# The cluster comes from the project's own start-slurm.sh and stop-slurm.sh beside this script
# (copied from the shared cluster scripts, provenance at their top), so a clone runs it alone.
#
# 1. if a Slurm controller is already up (`scontrol ping` says UP, or /run/slurm-local/slurmctld.pid
#    names a live slurmctld), uses that cluster and leaves it running; it must have node
#    "localhost" with gres gpu and accounting. Otherwise runs start-slurm.sh, which
#    installs munge, Slurm, slurmdbd and MariaDB when missing and brings up a one-node cluster on
#    localhost with accounting (sacct) and one fake GPU (GRES on /dev/null);
# 2. runs the demo workflow on tests/cluster/config_cluster.yaml in a fresh work directory with
#    `snakemake --executor slurm --workflow-profile workflow/profiles/slurm`, so every job goes
#    through sbatch (but the local rules: `all` and the two that write the list of training cases);
# 3. checks the outputs (segmentations on the input's grid, metrics.csv, report.html), that each
#    Slurm job of the run is COMPLETED in sacct, that no other rule ran outside Slurm, that train and
#    infer were given the GPU, and that the code falls back to the CPU under the fake GPU;
# 4. only if this run started the cluster: stops it with stop-slurm.sh (in the exit
#    trap, so also on failure or a signal) and checks that none of its daemons is left. The stop
#    script stops every daemon named by the cluster's pid files (munged and mariadbd too);
#    it leaves the installed packages, the configs in /etc/slurm and the state under
#    /var/lib/slurm-local, /var/log/slurm-local and /var/lib/mysql, which the next start reuses.
#
# Last line on success: "SLURM-TEST OK: <n> slurm jobs COMPLETED (<m> rule jobs) in <s> s".
# Environment: UNET_CLUSTER_TIMEOUT  seconds for the Snakemake run (default 900)
#              UNET_CLUSTER_KEEP=1   keep the work directory (with Snakemake's and Slurm's logs)
#              UNET_CLUSTER_ARGS     more Snakemake arguments (word-split), e.g. "--groups a=b"
#              SLURM_LOCAL_CPUS, SLURM_LOCAL_MEM_MB (default here 12000; start-slurm.sh caps it
#                                    at 80 % of RAM): passed to start-slurm.sh, which
#                                    this test always runs with SLURM_LOCAL_ACCOUNTING=1 and
#                                    SLURM_LOCAL_FAKE_GPU=1
set -euo pipefail
T0=$(date +%s)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
LIMIT=${UNET_CLUSTER_TIMEOUT:-900}
KEEP=${UNET_CLUSTER_KEEP:-0}
log() { printf '[slurm-test %4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
die() { log "FAILED: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root (it installs and starts the Slurm daemons)"
command -v apt-get >/dev/null || die "needs a Debian/Ubuntu machine (apt-get)"
[[ -x $REPO/.venv/bin/python ]] || die "no virtual environment at $REPO/.venv (see README: set up)"
# The project's cluster scripts, beside this one.
SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for f in start-slurm.sh stop-slurm.sh; do
  [[ -f $SCRIPTS/$f && -r $SCRIPTS/$f ]] || die "no readable $SCRIPTS/$f"
done
# sbatch jobs inherit this shell's environment: the venv's python must come first on PATH.
# shellcheck disable=SC1091
. "$REPO/.venv/bin/activate"
python -c "import snakemake_executor_plugin_slurm" 2>/dev/null \
  || die "snakemake-executor-plugin-slurm missing: pip install -e '.[slurm]'"

SCRATCH=$(mktemp -d /tmp/unet-slurm-test.XXXXXX)
WORK=$SCRATCH/work
OURS=0        # 1: this run started the cluster, so it stops it at the end
STARTED=()    # "PIDFILE COMM PID" of the cluster's daemons once up (checked after the stop)
SMK_PID=""
# The pid files of the daemons start-slurm.sh and stop-slurm.sh start and stop.
DAEMONS=("/run/slurm-local/slurmd.pid slurmd" "/run/slurm-local/slurmctld.pid slurmctld"
         "/run/slurm-local/slurmdbd.pid slurmdbd" "/run/mysqld/mysqld.pid mariadbd"
         "/run/munge/munged.pid munged")
live_pid() {   # live_pid PIDFILE COMM: print the pid if the pid file names a live COMM
  local p; p=$(cat "$1" 2>/dev/null) && [[ $p =~ ^[0-9]+$ && $(cat /proc/"$p"/comm 2>/dev/null) == "$2" ]] && echo "$p"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n $SMK_PID ]] && kill -0 "$SMK_PID" 2>/dev/null; then
    log "interrupting Snakemake (SIGINT: it cancels its Slurm jobs)"
    kill -INT "$SMK_PID" 2>/dev/null || true
    wait "$SMK_PID" 2>/dev/null || true
  fi
  if [[ $OURS == 1 ]]; then
    log "stopping the cluster this run started: bash $SCRIPTS/stop-slurm.sh"
    bash "$SCRIPTS/stop-slurm.sh" || rc=1
    local entry pidfile comm pid
    for entry in "${STARTED[@]}"; do   # verify: none of the cluster's daemons is left
      read -r pidfile comm pid <<<"$entry"
      if [[ $(cat /proc/"$pid"/comm 2>/dev/null) == "$comm" ]]; then log "ERROR: $comm pid $pid still running"; rc=1; fi
    done
  else log "the cluster was already running before this run; left running"; fi
  if [[ $KEEP == 1 ]]; then log "kept $SCRATCH"; else rm -rf "$SCRATCH"; fi
  log "finished with status $rc after $(( $(date +%s) - T0 )) s"
  exit "$rc"
}
trap cleanup EXIT
trap 'log "signal received"; exit 130' INT TERM

# --- 1. the cluster -------------------------------------------------------------------------
ctld_up() {   # the pid file first: `scontrol ping` takes about 10 s to report a controller DOWN
  [[ -n $(live_pid /run/slurm-local/slurmctld.pid slurmctld) ]] \
    || { command -v scontrol >/dev/null && timeout 20 scontrol ping 2>/dev/null | grep -q "is UP"; }
}
if ctld_up; then
  log "a Slurm controller is already up: using that cluster, and leaving it running"
  command -v sinfo >/dev/null && command -v sacct >/dev/null || die "the running cluster has no sinfo/sacct on PATH"
  state=$(sinfo -h -N -n localhost -o %t 2>/dev/null | head -n 1 || true)
  [[ $state =~ ^(idle|mix|alloc) ]] \
    || die "the running cluster has no usable node 'localhost' (state '${state:-none}'); stop it (bash $SCRIPTS/stop-slurm.sh) and rerun"
  [[ $(sinfo -h -N -n localhost -o %G) == *gpu* ]] \
    || die "the running cluster's node has no gres gpu; stop it (bash $SCRIPTS/stop-slurm.sh) and rerun, so it starts with SLURM_LOCAL_FAKE_GPU=1"
  config=$(scontrol show config)   # (not piped into grep -q: with pipefail, SIGPIPE fails the pipe)
  grep -qE "^AccountingStorageType += accounting_storage/slurmdbd" <<<"$config" \
    || die "the running cluster has no accounting (slurmdbd); stop it (bash $SCRIPTS/stop-slurm.sh) and rerun, so it starts with SLURM_LOCAL_ACCOUNTING=1"
else
  before=()   # daemons up before the start: stop-slurm.sh stops them too
  for d in "${DAEMONS[@]}"; do
    read -r pidfile comm <<<"$d"
    pid=$(live_pid "$pidfile" "$comm") && before+=("$comm=$pid")
  done
  ((${#before[@]} == 0)) || log "note: already running (stop-slurm.sh stops these too at the end): ${before[*]}"
  OURS=1   # from here on the exit trap stops the cluster, even if the start fails half-way
  log "starting the cluster: bash $SCRIPTS/start-slurm.sh"
  SLURM_LOCAL_MEM_MB=${SLURM_LOCAL_MEM_MB:-12000} SLURM_LOCAL_FAKE_GPU=1 SLURM_LOCAL_ACCOUNTING=1 \
    bash "$SCRIPTS/start-slurm.sh" || die "start-slurm.sh failed (output above)"
  for d in "${DAEMONS[@]}"; do
    read -r pidfile comm <<<"$d"
    pid=$(live_pid "$pidfile" "$comm") && STARTED+=("$pidfile $comm $pid")
  done
fi
CPUS=$(sinfo -h -N -n localhost -o %c)
NODE_MEM=$(sinfo -h -N -n localhost -o %m)
log "cluster up (node: $CPUS cpus, $NODE_MEM MB, gres $(sinfo -h -N -n localhost -o %G))"

# --- 2. the workflow through sbatch ---------------------------------------------------------
mkdir -p "$WORK/config"
cp "$HERE/config_cluster.yaml" "$WORK/config/config.yaml"
SMK_LOG=$SCRATCH/snakemake.log
cd "$WORK"
# The user profile plus what a 2-CPU test node needs: group jobs and train sized to the node, a
# fast first status check, the Slurm logs kept for the checks below, no retries (fail fast).
args=(-s "$REPO/Snakefile" -d "$WORK" --executor slurm --workflow-profile "$REPO/workflow/profiles/slurm"
      --cores "$CPUS" --jobs 4 --resources gpu=1 "mem_mb=$NODE_MEM" --retries 0 --latency-wait 10
      --slurm-init-seconds-before-status-checks 2 --seconds-between-status-checks 2
      --slurm-keep-successful-logs)
read -r -a extra <<<"${UNET_CLUSTER_ARGS:-}"; args+=("${extra[@]}")
log "snakemake ${args[*]}"
set -m   # own process group: SIGINT reaches Snakemake (background jobs would ignore it otherwise)
timeout --signal=INT --kill-after=60 "$LIMIT" python -m snakemake "${args[@]}" >"$SMK_LOG" 2>&1 &
SMK_PID=$!
set +m
smk_rc=0; wait "$SMK_PID" || smk_rc=$?
SMK_PID=""
if [[ $smk_rc != 0 ]]; then
  tail -n 60 "$SMK_LOG" >&2
  for f in "$WORK"/.snakemake/slurm_logs/*/*/*.log "$WORK"/.snakemake/slurm_logs/*/*.log; do
    [[ -f $f ]] && grep -qE "Error|error|Traceback" "$f" && { echo "--- $f" >&2; tail -n 30 "$f" >&2; }
  done
  [[ $smk_rc == 124 ]] && die "Snakemake did not finish within $LIMIT s"
  die "Snakemake exited with status $smk_rc (log above)"
fi
log "snakemake finished"

# --- 3. checks ------------------------------------------------------------------------------
RUN_ID=$(sed -n 's/.*SLURM run ID: \([0-9a-f-]*\).*/\1/p' "$SMK_LOG" | head -n 1)
[[ -n $RUN_ID ]] || die "no 'SLURM run ID' in the Snakemake log"
submitted=$(grep -oE "submitted with SLURM jobid [0-9]+" "$SMK_LOG" | awk '{print $NF}' | sort -n | uniq)
n_submitted=$(grep -c . <<<"$submitted" || true)
rule_jobs=$(awk '/^total /{print $2; exit}' "$SMK_LOG")   # Job stats total, includes the target rule
[[ -n $rule_jobs ]] || die "no job stats in the Snakemake log"
# No rule may run on the submitting host but the target rule `all` and the local rules that only
# write or read small JSON/CSV files: the lists of training cases (training_cases_imported,
# training_cases_prepared), the plan from fingerprint.json (plan) and the review list (review).
local_rules=$(grep -oE "^localrule [a-z_]+" "$SMK_LOG" | awk '{print $2}' | sort -u \
  | grep -vxF -e all -e training_cases_imported -e training_cases_prepared -e plan -e review || true)
[[ -z $local_rules ]] || die "rules run outside Slurm: $local_rules"
n_local=$(grep -cE "^localrule [a-z_]+:" "$SMK_LOG" || true)   # jobs run on the submitting host

# sacct: every job of this run (job name = the plugin's run id) is COMPLETED; one per submission.
sacct_rows=$(sacct -X -n -P --name "$RUN_ID" -S now-1days -o JobID,State,AllocTRES)
n_jobs=$(grep -c . <<<"$sacct_rows" || true)
n_completed=$(awk -F'|' '$2 == "COMPLETED"' <<<"$sacct_rows" | grep -c . || true)
n_gpu=$(grep -c "gres/gpu=1" <<<"$sacct_rows" || true)
printf '%s\n' "sacct for run $RUN_ID:" "$sacct_rows" | sed 's/^/    /'
(( n_jobs > 0 )) || die "sacct shows no job of this run"
(( n_completed == n_jobs )) || die "$((n_jobs - n_completed)) of $n_jobs slurm jobs not COMPLETED"
(( n_jobs == n_submitted )) || die "sacct shows $n_jobs jobs, Snakemake submitted $n_submitted"
[[ $(cut -d'|' -f1 <<<"$sacct_rows" | sort -n | tr '\n' ' ') == "$(tr '\n' ' ' <<<"$submitted")" ]] \
  || die "the job ids in sacct differ from those Snakemake submitted"
# Every rule job ran inside one of those Slurm jobs: count the rules executed in the kept Slurm
# logs (inside a Slurm job each rule runs as "localrule NAME:"; "rule NAME:" lines only list them).
in_slurm=$(cat "$WORK"/.snakemake/slurm_logs/*/*/*.log "$WORK"/.snakemake/slurm_logs/*/*.log 2>/dev/null \
  | grep -cE "^localrule [a-z_]+:" || true)
(( in_slurm == rule_jobs - n_local )) || die "$in_slurm rule jobs in the Slurm logs, expected $((rule_jobs - n_local))"
# GPU: train and the group holding infer were allocated the (fake) GPU, and under such an
# allocation the code picks the CPU, since CUDA_VISIBLE_DEVICES names no real device.
(( n_gpu >= 2 )) || die "expected the train and infer jobs to hold gres/gpu=1, got $n_gpu job(s)"
device=$(srun -n1 -t 2 --mem=1000 --gpus=1 --chdir="$REPO" python -c \
  'import os; from unet_pipeline.device import select_device; print(os.environ.get("CUDA_VISIBLE_DEVICES"), select_device())')
[[ $device == "0 cpu" ]] || die "under a fake GPU expected 'CUDA_VISIBLE_DEVICES=0, device cpu', got '$device'"
log "fake GPU: CUDA_VISIBLE_DEVICES=${device% *}, select_device() -> ${device#* } (CPU fallback)"
if grep -rhoiE "device[=: ]+'?(cuda|cpu)[^ ]*" "$WORK"/results/logs/infer "$WORK"/results/logs/model 2>/dev/null \
    | grep -qi cuda; then die "a job log says it used CUDA under the fake GPU"; fi

python - "$WORK/results" <<'EOF' || die "output check failed"
import csv, json, sys
from pathlib import Path
import nibabel as nib
import numpy as np

results = Path(sys.argv[1])
segs = sorted((results / "segmentations").glob("*.nii.gz"))
assert segs, "no segmentations"
for seg in segs:
    case = seg.name[:-7]
    src = nib.load(str(results / "demo_cohort" / "images" / f"{case}.nii.gz"))
    out = nib.load(str(seg))
    assert out.shape == src.shape, (case, out.shape, src.shape)
    np.testing.assert_allclose(out.affine, src.affine, atol=1e-5, err_msg=case)
    assert out.get_data_dtype() == np.uint8, (case, out.get_data_dtype())
    labels = set(np.unique(np.asarray(out.dataobj)).tolist())
    assert labels <= {0, 1, 2, 3, 4}, (case, labels)
with open(results / "metrics" / "metrics.csv", encoding="utf-8") as fh:
    rows = list(csv.DictReader(fh))
assert rows and {"case", "label", "dice", "hd95_mm"} <= set(rows[0]), rows[:1]
assert {r["case"] for r in rows} == {s.name[:-7] for s in segs}, "metrics do not cover the segmented cases"
json.loads((results / "metrics" / "summary.json").read_text(encoding="utf-8"))
html = (results / "report.html").read_text(encoding="utf-8")
assert "data:image/png;base64," in html, "report.html has no embedded figure"
print(f"    outputs ok: {len(segs)} segmentations on the input grid, {len(rows)} metric rows, "
      f"report.html {len(html) // 1024} KiB")
EOF

log "rule jobs: $rule_jobs (incl. $n_local run locally: 'all', the training-case lists, plan and review); slurm jobs: $n_jobs; with gres/gpu: $n_gpu"
log "SLURM-TEST OK: $n_jobs slurm jobs COMPLETED ($((rule_jobs - n_local)) rule jobs) in $(( $(date +%s) - T0 )) s"
