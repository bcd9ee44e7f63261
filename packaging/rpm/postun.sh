# %postun of the surepush .rpm ($1: 0 = erase, 1 = upgrade). On upgrades rpm runs the
# OLD package's %postun, after the new files are in place. packaging/build.sh replaces
# #COMMON# with packaging/scripts/common.sh.
#COMMON#

if sp_systemd_running; then
    systemctl daemon-reload >/dev/null 2>&1 || true
    if [ "$1" -ge 1 ]; then
        # Restart a running server on the new binary; never start a stopped one.
        systemctl try-restart "$sp_unit" >/dev/null 2>&1 || sp_start_failed
    fi
fi
# On erase, rpm keeps a modified /etc/surepush/surepush.toml as .rpmsave, and the data in
# /var/lib/surepush stays (remove it by hand); the user and group stay too.
exit 0
