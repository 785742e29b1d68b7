#!/usr/bin/env bash
# Archive benchmark: ReadingRoom and tuned Orthanc side by side, interleaved, in one run.
#
#   bash bench/run_vs_orthanc.sh                 # dataset "small" (1,982 instances), 2 rounds
#   DATASET=large ROUNDS=1 bash bench/run_vs_orthanc.sh   # 19,820 instances (QIDO target size)
#
# Uses the protocol-generic harness in ../shared/bench (DIMSE via dcmtk, DICOMweb via HTTP).
# Both servers get a fresh, empty store each round; rounds alternate which one goes first, as
# the machine is noisy. Figures: bench/results/*.json; the table is printed and appended to
# bench/RESULTS.md (at the end, under "Archive benchmark run log") with the command that made it. Needs: apt-get install dcmtk orthanc orthanc-dicomweb.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
HARNESS=${HARNESS:-$ROOT/../shared/bench}
DATASET=${DATASET:-small}
ROUNDS=${ROUNDS:-2}
PHASES=${PHASES:-ingest,verify,qido,wado,cfind}
PY=${PY:-$ROOT/.venv/bin/python}
[[ -x $PY ]] || PY=$(python3 -c 'import sys; print(sys.executable)')
# dcmtk tools, not the same-named pynetdicom scripts a venv or pyenv shim may put first on PATH
export PATH=/usr/bin:$PATH
RR=("$PY" -m readingroom)
RESULTS=$ROOT/bench/results
DATA=$ROOT/bench/data
WORK=${WORK:-/tmp/rr-bench}
mkdir -p "$RESULTS/raw" "$DATA"
command -v Orthanc >/dev/null && command -v storescu >/dev/null || {
  echo "needs: apt-get install -y orthanc orthanc-dicomweb dcmtk"; exit 1; }
# Both servers use fixed ports; a leftover server would be measured instead (or make startup fail).
for port in 4242 8042 8080 11112; do
  if ss -ltn "sport = :$port" | grep -q LISTEN; then echo "port $port is in use: stop whatever listens there"; exit 1; fi
done

case $DATASET in
  small) GEN=(--studies 20 --series 4 --instances 35) ;;
  large) GEN=(--studies 200 --series 4 --instances 35) ;;
  manystudies) GEN=(--studies 4000 --series 1 --instances 2 --modalities MR,US) ;;
  *) echo "unknown DATASET $DATASET"; exit 2 ;;
esac
[[ -f $DATA/$DATASET/manifest.json ]] || $PY "$HARNESS/gen_dataset.py" --name "$DATASET" --out "$DATA" "${GEN[@]}"

run_orthanc() {  # label
  ORTHANC_WORKDIR=$WORK/orthanc "$HARNESS/run_orthanc.sh" stop >/dev/null 2>&1 || true
  ORTHANC_WORKDIR=$WORK/orthanc ORTHANC_TCP_NODELAY=1 "$HARNESS/run_orthanc.sh" start --wipe >/dev/null
  $PY "$HARNESS/bench_archive.py" --label "$1" --dataset "$DATA/$DATASET" --phases "$PHASES" \
    --results-dir "$RESULTS" --dimse 127.0.0.1:4242:ORTHANC --dicomweb http://127.0.0.1:8042/dicom-web \
    --orthanc-url http://127.0.0.1:8042 --server-pid-file "$WORK/orthanc/orthanc.pid" \
    --target-info "server=Orthanc (Debian) tuned: TCP_NODELAY=1" > "$RESULTS/raw/$1.out" 2>&1 \
    || { tail -30 "$RESULTS/raw/$1.out"; ORTHANC_WORKDIR=$WORK/orthanc "$HARNESS/run_orthanc.sh" stop; exit 1; }
  ORTHANC_WORKDIR=$WORK/orthanc "$HARNESS/run_orthanc.sh" stop >/dev/null
  rm -rf "$WORK/orthanc"
}

run_readingroom() {  # label
  local dir=$WORK/readingroom
  rm -rf "$dir"; mkdir -p "$dir"
  export READINGROOM_DATA_DIR=$dir READINGROOM_ACCEPT_LOOPBACK_AETS=true READINGROOM_LOG_LEVEL=WARNING
  "${RR[@]}" user add bench --role admin --password bench >/dev/null
  local token; token=$("${RR[@]}" token create bench)
  "${RR[@]}" serve > "$dir/serve.log" 2>&1 &
  local pid=$!; echo $pid > "$dir/serve.pid"
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:8080/healthz >/dev/null && break; sleep 0.2; done
  $PY "$HARNESS/bench_archive.py" --label "$1" --dataset "$DATA/$DATASET" --phases "$PHASES" \
    --results-dir "$RESULTS" --dimse 127.0.0.1:11112:READINGROOM --dicomweb http://127.0.0.1:8080/dicomweb \
    --header "Authorization:Bearer $token" --server-pid-file "$dir/serve.pid" \
    --target-info "server=ReadingRoom $(git rev-parse --short HEAD 2>/dev/null || echo dev)" \
    > "$RESULTS/raw/$1.out" 2>&1 || { tail -30 "$RESULTS/raw/$1.out"; kill $pid; exit 1; }
  kill $pid; wait $pid 2>/dev/null || true
  unset READINGROOM_DATA_DIR READINGROOM_ACCEPT_LOOPBACK_AETS READINGROOM_LOG_LEVEL
  rm -rf "$dir"
}

labels=()
for r in $(seq 1 "$ROUNDS"); do
  if (( r % 2 )); then
    run_readingroom "readingroom-$DATASET-r$r"; run_orthanc "orthanc-$DATASET-r$r"
  else
    run_orthanc "orthanc-$DATASET-r$r"; run_readingroom "readingroom-$DATASET-r$r"
  fi
  labels+=("$RESULTS/readingroom-$DATASET-r$r.json" "$RESULTS/orthanc-$DATASET-r$r.json")
done
table=$($PY "$HARNESS/report.py" "${labels[@]}")
echo "$table"
{
  echo
  echo "### $DATASET, $(date -u +%Y-%m-%dT%H:%MZ), $ROUNDS round(s)"
  echo
  echo "Command: \`DATASET=$DATASET ROUNDS=$ROUNDS PHASES=$PHASES bash bench/run_vs_orthanc.sh\`"
  echo
  echo "$table"
} >> bench/RESULTS.md
