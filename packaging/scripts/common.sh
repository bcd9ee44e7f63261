# --- shared by the surepush maintainer scripts (packaging/scripts/common.sh) ---------
# packaging/build.sh puts this text where a script says #COMMON#, in the .deb's
# postinst/prerm/postrm and the .rpm's %pre/%post/%preun/%postun alike.
#
# Paths are prefixed with $DPKG_ROOT, as Debian asks of maintainer scripts (dpkg sets it
# for installs into another root; empty otherwise). tests/packaging.sh uses it to run
# the real scripts against a temporary root.
sp_root="${DPKG_ROOT:-}"
sp_conf=/etc/surepush/surepush.toml
sp_data=/var/lib/surepush
sp_unit=surepush.service

# sp_entry passwd|group NAME: the entry, from the target root's files or from NSS.
sp_entry() {
    if [ -n "$sp_root" ]; then
        grep "^$2:" "$sp_root/etc/$1" 2>/dev/null
    else
        getent "$1" "$2"
    fi
}

sp_shadow() {
    sp_cmd=$1
    shift
    if [ -n "$sp_root" ]; then
        "$sp_cmd" --prefix "$sp_root" "$@"
    else
        "$sp_cmd" "$@"
    fi
}

# The system user and group `surepush`, created once (never removed: files may remain).
sp_ensure_user() {
    if ! sp_entry group surepush >/dev/null; then
        sp_shadow groupadd --system surepush
    fi
    if ! sp_entry passwd surepush >/dev/null; then
        sp_shadow useradd --system --gid surepush --home-dir "$sp_data" --no-create-home \
            --shell /usr/sbin/nologin --comment "surepush push server" surepush
    fi
}

sp_uid() { sp_entry passwd surepush | cut -d: -f3; }
sp_gid() { sp_entry group surepush | cut -d: -f3; }

# /var/lib/surepush, owned by surepush, mode 0750; an existing one is left as it is.
sp_ensure_data_dir() {
    if [ ! -d "$sp_root$sp_data" ]; then
        mkdir -p "$sp_root$sp_data"
        chown "$(sp_uid):$(sp_gid)" "$sp_root$sp_data"
        chmod 0750 "$sp_root$sp_data"
    fi
}

sp_systemd_running() { [ -d "$sp_root/run/systemd/system" ]; }

sp_active() { sp_systemd_running && systemctl is-active --quiet "$sp_unit" 2>/dev/null; }

# `surepush init --config`, as the surepush user: the data directory's certificate,
# signing key and first admin user (its password printed once). Idempotent. A failure
# is reported, not fatal: `serve` makes the certificate and key itself on first start.
sp_init() {
    if setpriv --reuid="$(sp_uid)" --regid="$(sp_gid)" --clear-groups -- \
        "$sp_root/usr/bin/surepush" init --config "$sp_root$sp_conf"; then
        return 0
    fi
    echo "surepush: 'surepush init' failed (see above); run it again with:" >&2
    echo "  runuser -u surepush -- surepush init --config $sp_conf" >&2
}

sp_no_systemd_hint() {
    echo "surepush: systemd is not running here (a container?): nothing was started."
    echo "  Start the server with: runuser -u surepush -- surepush serve --config $sp_conf"
    echo "  (ports below 1024 need CAP_NET_BIND_SERVICE, or set listen in $sp_conf)"
}

sp_start_failed() {
    echo "surepush: the service did not start; see: journalctl -u $sp_unit" >&2
    echo "  (is another server using the port? listen is set in $sp_conf)" >&2
}

sp_not_running_hint() {
    if ! systemctl is-active --quiet "$sp_unit" 2>/dev/null; then
        echo "surepush: $sp_unit is not running; start it with: systemctl start surepush"
    fi
}
# --- end of common.sh -----------------------------------------------------------------
