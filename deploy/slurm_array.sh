#!/usr/bin/env bash
# hpo workers on every GPU of each node of a SLURM array, all on one study in a shared database.
#
#   sbatch --array=0-7 deploy/slurm_array.sh study.yaml sst2
#
# Each array task gets a node's 4 GPUs and runs one worker pinned to each (`--devices all`);
# HPO_WORKERS_PER_DEVICE=2 packs two on each GPU (small models). With `devices_per_trial: N` in
# the config, each worker is a torchrun group of N GPUs instead (one data-parallel trial).
#
# Needs on every node: the same hpo install (e.g. a venv or container on the shared
# filesystem), the data at the path the config names (or a hub id / built-in dataset), and the
# database. Put the storage URL in ~/.hpo_storage (chmod 600) or export HPO_STORAGE before
# sbatch (--export=ALL is SLURM's default), never on the command line.
#
#SBATCH --job-name=hpo-worker
#SBATCH --cpus-per-task=16
#SBATCH --mem=64G
#SBATCH --gres=gpu:4
#SBATCH --time=12:00:00
#SBATCH --output=hpo-worker-%A_%a.log
# SIGTERM 120 s before the time limit: the worker hands its running trial back to the study.
#SBATCH --signal=B:TERM@120

set -euo pipefail

CONFIG=${1:?usage: sbatch --array=0-N deploy/slurm_array.sh CONFIG STUDY}
STUDY=${2:?usage: sbatch --array=0-N deploy/slurm_array.sh CONFIG STUDY}
if [[ -z "${HPO_STORAGE:-}" && -r "$HOME/.hpo_storage" ]]; then
  HPO_STORAGE=$(<"$HOME/.hpo_storage")
fi
export HPO_STORAGE=${HPO_STORAGE:?set HPO_STORAGE to postgresql+psycopg://... or mysql+pymysql://...}
# hpo splits the task's cores between the workers it starts on the node's GPUs.
export OMP_NUM_THREADS=$(( ${SLURM_CPUS_PER_TASK:-4} / 4 ))

# Every task may try to create the study: the first one creates it, the others find the same
# config and do nothing (a different config is refused, and the task stops here).
hpo create --config "$CONFIG" --study "$STUDY"

# `exec` is not used: bash must stay to pass SLURM's SIGTERM on to the workers (--signal=B:);
# hpo forwards it to each GPU's worker, and each hands its running trial back.
hpo worker --study "$STUDY" --devices all --workers-per-device "${HPO_WORKERS_PER_DEVICE:-1}" \
  --worker-id "slurm-${SLURM_ARRAY_JOB_ID:-0}_${SLURM_ARRAY_TASK_ID:-0}" &
worker=$!
trap 'kill -TERM "$worker" 2>/dev/null' TERM INT
wait "$worker" || status=$?
wait "$worker" 2>/dev/null || true  # after a trap, wait once more for the hand-back to finish
exit "${status:-0}"
