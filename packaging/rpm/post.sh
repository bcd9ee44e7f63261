# %post of the surepush .rpm ($1: 1 = install, 2 = upgrade). packaging/build.sh replaces
# #COMMON# with packaging/scripts/common.sh.
set -e

#COMMON#

sp_ensure_data_dir
# A running server holds the database: init only when it is not running.
if sp_active; then
    echo "surepush: $sp_unit is running; 'surepush init' not needed"
else
    sp_init
fi
if [ "$1" -eq 1 ]; then
    # Same as the .deb: enabled and started on first install.
    if command -v systemctl >/dev/null 2>&1; then
        systemctl --no-reload enable "$sp_unit" >/dev/null 2>&1 || true
    fi
    if sp_systemd_running; then
        systemctl daemon-reload >/dev/null 2>&1 || true
        systemctl start "$sp_unit" || sp_start_failed
    else
        sp_no_systemd_hint
    fi
fi
exit 0
