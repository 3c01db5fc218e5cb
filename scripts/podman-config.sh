#!/usr/bin/env bash
# Lets Debian's podman run as root with Debian's runc on machines without systemd: writes
# /etc/containers/containers.conf when it is missing, or a drop-in beside it when the file
# exists but lacks the settings. Does nothing when they are already there.
set -euo pipefail

conf=/etc/containers/containers.conf
settings='[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
'

has_settings() {
    grep -Eq '^[[:space:]]*default_ulimits[[:space:]]*=[[:space:]]*\[\]' "$1" &&
        grep -Eq '^[[:space:]]*cgroup_manager[[:space:]]*=[[:space:]]*"cgroupfs"' "$1" &&
        grep -Eq '^[[:space:]]*runtime[[:space:]]*=[[:space:]]*"runc"' "$1"
}

mkdir -p /etc/containers
if [ ! -e "$conf" ]; then
    printf '%s' "$settings" >"$conf"
    echo "wrote $conf"
elif has_settings "$conf"; then
    :
else
    # Two [containers] tables in one TOML file are an error, so the settings go into a
    # drop-in, which podman reads after the main file.
    mkdir -p /etc/containers/containers.conf.d
    printf '%s' "$settings" >/etc/containers/containers.conf.d/50-ersilia-pack.conf
    echo "wrote /etc/containers/containers.conf.d/50-ersilia-pack.conf"
fi
