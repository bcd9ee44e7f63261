#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers an attacker reaches first (cargo-fuzz,
# libFuzzer, on the stable toolchain with RUSTC_BOOTSTRAP=1). Each target starts from
# its seeds (seeds/<target>/, including inputs that once crashed) and the corpus it grew
# before (corpus/<target>/, not committed).
#
#   bash tests/fuzz/run.sh                      # every target 10 s (what tests/run.sh runs)
#   bash tests/fuzz/run.sh --seconds 600 jwt_text
#   bash tests/fuzz/run.sh --runs 10000000      # the long run: 10 M execs per target
#
# Prints one line per target (execs, seconds, result) and fails on the first crash,
# leaving the input in artifacts/<target>/ and the libFuzzer log in logs/<target>.log.
set -euo pipefail
cd "$(dirname "$0")"

seconds=10
runs=""
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) targets+=("$1"); shift ;;
  esac
done
all=(publish_body sse_frame query_params event_ids topic_patterns jwt_text backup_reader json_check)
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi
export RUSTC_BOOTSTRAP=1
# No AddressSanitizer: the code under test is safe Rust; debug assertions and overflow
# checks stay on (-a), so an overflow is a crash.
flags=(--fuzz-dir . --sanitizer none --debug-assertions)
cargo fmt --manifest-path Cargo.toml -- --check
cargo fuzz build "${flags[@]}"

if [ -n "$runs" ]; then limit=(-runs="$runs"); else limit=(-max_total_time="$seconds"); fi
mkdir -p logs
printf '%-16s %14s %9s  %s\n' target execs seconds result
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  start=$(date +%s)
  status=0
  cargo fuzz run "${flags[@]}" "$t" "corpus/$t" "seeds/$t" -- \
    "${limit[@]}" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
    >"logs/$t.log" 2>&1 || status=$?
  took=$(( $(date +%s) - start ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$t.log" | tail -1)
  if [ "$status" -eq 0 ]; then result="0 crashes"; else result="FAILED (exit $status)"; fi
  printf '%-16s %14s %9s  %s\n' "$t" "${execs:-?}" "$took" "$result"
  if [ "$status" -ne 0 ]; then
    grep -E "panicked|SUMMARY|Test unit written" "logs/$t.log" | head -5 >&2 || true
    exit 1
  fi
done
