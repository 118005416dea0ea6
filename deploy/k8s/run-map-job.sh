#!/usr/bin/env bash
# Route command for the listener on Kubernetes: runs one study as a Job of the app's MAP image
# and waits for it. Kubernetes schedules, retries and cleans up; this only fills the template.
#   run-map-job.sh APP IMAGE INPUT OUTPUT     (INPUT/OUTPUT: folders under $SPOOL_ROOT)
set -euo pipefail
app=$1 image=$2 input=$3 output=$4
root=${SPOOL_ROOT:-/spool}
name="oncoplan-${app}-$(basename "$(dirname "$input")")-$(date +%s)"
mkdir -p "$output"
sed -e "s|__NAME__|${name}|g" -e "s|__IMAGE__|${image}|g" \
    -e "s|__INPUT__|${input#"$root"/}|g" -e "s|__OUTPUT__|${output#"$root"/}|g" \
    "$(dirname "$0")/map-job.template.yaml" | kubectl apply -f -
# Poll until the Job succeeds or fails; the listener's route timeout bounds the wait.
while sleep 5; do
  state=$(kubectl get "job/${name}" -o jsonpath='{.status.succeeded}/{.status.failed}')
  case "$state" in
    1/*) exit 0 ;;
    */[1-9]*) kubectl logs "job/${name}" --tail=20 >&2 || true; exit 1 ;;
  esac
done
