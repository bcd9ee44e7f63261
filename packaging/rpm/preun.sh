# %preun of the surepush .rpm ($1: 0 = erase, 1 = upgrade). packaging/build.sh replaces
# #COMMON# with packaging/scripts/common.sh.
#COMMON#

if [ "$1" -eq 0 ]; then
    if command -v systemctl >/dev/null 2>&1; then
        systemctl --no-reload disable "$sp_unit" >/dev/null 2>&1 || true
    fi
    if sp_systemd_running; then
        systemctl stop "$sp_unit" >/dev/null 2>&1 || true
    fi
fi
exit 0
