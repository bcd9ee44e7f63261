#!/usr/bin/env bash
# Checks the lifecycle settings of the systemd unit that the server relies on: it
# notifies (Type=notify, READY=1 / STOPPING=1 / WATCHDOG=1 from the main process, see
# src/systemd.rs), the watchdog restarts a server whose storage probe keeps failing, a
# failure exit (75 after storage.fatal_after_secs) restarts it, and a first start has time.
# tests/packaging.sh runs it on the packaged unit; alone it needs nothing but bash:
#
#   bash tests/unit-file.sh [path/to/surepush.service]   # default: packaging/systemd/
set -euo pipefail
cd "$(dirname "$0")/.."
unit=${1:-packaging/systemd/surepush.service}
[ -f "$unit" ] || { echo "tests/unit-file.sh: FAIL: no unit at $unit" >&2; exit 1; }
failed=0
for k in Type=notify NotifyAccess=main WatchdogSec=90s TimeoutStartSec=90s Restart=on-failure \
  'ExecReload=/bin/kill -HUP $MAINPID'; do
  grep -qxF "$k" "$unit" || { echo "tests/unit-file.sh: FAIL: $unit lacks $k" >&2; failed=1; }
done
grep -qE '^RestartSec=[0-9]+(ms|s|min)?$' "$unit" \
  || { echo "tests/unit-file.sh: FAIL: $unit lacks RestartSec=" >&2; failed=1; }
# One Type= only: a leftover Type=simple after Type=notify would win.
[ "$(grep -c '^Type=' "$unit")" = 1 ] || { echo "tests/unit-file.sh: FAIL: $unit has several Type= lines" >&2; failed=1; }
# Exit 75 must restart: neither excluded from restarts nor counted as success.
if grep -qE '^(RestartPreventExitStatus|SuccessExitStatus)=.*\b75\b' "$unit"; then
  echo "tests/unit-file.sh: FAIL: $unit keeps exit 75 from restarting the server" >&2
  failed=1
fi
[ "$failed" = 0 ] || exit 1
echo "ok - unit lifecycle settings in $unit"
