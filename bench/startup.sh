#!/usr/bin/env bash
# Time from `surepush serve` to ready (/readyz 200) on an existing data directory: opening
# reads every event segment and builds the in-memory per-topic index on the way.
#
#   bash bench/startup.sh DATA_DIR [SUREPUSH_BINARY]
#
# Fill a data directory first, e.g. with about 1 GiB of segments:
#   surepush-bench soak --secs 40 --max-events-per-topic 0 \
#     --max-disk-bytes 1073741824 --data-dir /tmp/sp-big
# Prints the size of db/, the time to ready, the events indexed and the RSS once ready.
set -euo pipefail
dir=${1:?usage: bench/startup.sh DATA_DIR [SUREPUSH_BINARY]}
bin=${2:-target/release/surepush}
port=${PORT:-18943}
[ -d "$dir/db" ] || { echo "no database in $dir" >&2; exit 1; }
# a cold read, as after a reboot, when allowed to drop the page cache (root)
if [ "$(id -u)" = 0 ] && [ "${COLD:-1}" = 1 ]; then
  sync && echo 3 > /proc/sys/vm/drop_caches && cache=cold
else
  cache=warm
fi
start=$(date +%s.%N)
SUREPUSH_AUTH__ENABLED=false "$bin" serve --data-dir "$dir" --listen "127.0.0.1:$port" \
  >/dev/null 2>"$dir/startup.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
until curl -fsk -o /dev/null "https://127.0.0.1:$port/readyz" 2>/dev/null; do
  kill -0 $pid 2>/dev/null || { echo "surepush exited:" >&2; cat "$dir/startup.log" >&2; exit 1; }
  sleep 0.02
done
end=$(date +%s.%N)
entries=$(curl -fsk "https://127.0.0.1:$port/metrics" | awk '/^surepush_index_entries /{print $2}')
rss=$(awk '/^VmRSS/{print $2" "$3}' /proc/$pid/status)
printf 'db/ %s, %s page cache: ready in %.2f s, %s events indexed, RSS %s\n' \
  "$(du -sh "$dir/db" | cut -f1)" "$cache" "$(awk "BEGIN{print $end - $start}")" "$entries" "$rss"
