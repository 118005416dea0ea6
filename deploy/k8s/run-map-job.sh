#!/usr/bin/env bash
# Route command for the listener on Kubernetes: runs one study as a Job of the app's MAP image
# and waits for it. The listener owns retries; this only fills the template.
#   run-map-job.sh APP IMAGE JOB INPUT OUTPUT     (JOB: the listener's job id; INPUT/OUTPUT under $SPOOL_ROOT)
#   run-map-job.sh --stop APP JOB                 (the route's stop command: ends that Job, if any)
#   run-map-job.sh --render APP IMAGE JOB INPUT OUTPUT   (print the Job it would apply; nothing runs)
# The Job's name comes from the listener's job id alone, so the stop command (and a rerun after a
# crash) finds the Job this script started; a TERM to this script deletes it as well.
set -euo pipefail
if [ "${1:-}" = "--stop" ]; then
  exec kubectl delete job "oncoplan-$2-$3" --ignore-not-found --wait=true
fi
render=false
if [ "${1:-}" = "--render" ]; then render=true; shift; fi
app=$1 image=$2 job=$3 input=$4 output=$5
root=${SPOOL_ROOT:-/spool}
name="oncoplan-${app}-${job}"
job_yaml() {
  sed -e "s|__NAME__|${name}|g" -e "s|__IMAGE__|${image}|g" \
      -e "s|__INPUT__|${input#"$root"/}|g" -e "s|__OUTPUT__|${output#"$root"/}|g" \
      "$(dirname "$0")/map-job.template.yaml"
}
if $render; then job_yaml; exit 0; fi
mkdir -p "$output"
kubectl delete job "$name" --ignore-not-found --wait=true >/dev/null  # an attempt a crashed listener left
trap 'kubectl delete job "$name" --ignore-not-found --wait=false >/dev/null 2>&1 || true; exit 143' TERM INT
job_yaml | kubectl apply -f -
# Poll until the Job succeeds or fails; the listener's route timeout bounds the wait.
while sleep 5; do
  state=$(kubectl get "job/${name}" -o jsonpath='{.status.succeeded}/{.status.failed}')
  case "$state" in
    1/*) exit 0 ;;
    */[1-9]*) kubectl logs "job/${name}" --tail=20 >&2 || true; exit 1 ;;
  esac
done
