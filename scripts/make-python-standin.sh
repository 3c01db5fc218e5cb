#!/usr/bin/env bash
# Builds a stand-in for the python:3.11-slim image on machines that cannot pull images:
# Debian bookworm (minbase) with its python3 (3.11), venv and pip, `python` as python3, and
# python's EXTERNALLY-MANAGED marker removed so pip installs into the system Python as it does
# in the official image. It is imported into podman as localhost/python-standin:3.11-slim.
# Nothing is done when that image exists already. Needs root, debootstrap and the Debian mirror.
#
#   scripts/make-python-standin.sh [IMAGE]
set -euo pipefail

image="${1:-localhost/python-standin:3.11-slim}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if podman image exists "$image"; then
    echo "stand-in $image exists"
    exit 0
fi

work="$(mktemp -d /var/tmp/python-standin.XXXXXX)"
trap 'rm -rf "$work"' EXIT
root="$work/root"

echo "building stand-in $image with debootstrap (a few minutes)"
debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
    bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    exit 1
}

rm -f "$root"/usr/lib/python3.*/EXTERNALLY-MANAGED
# What the official slim image leaves out too: package lists, caches, docs and man pages.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/tmp/*
find "$root"/usr/lib/python3* -name __pycache__ -type d -prune -exec rm -rf {} +

tar --numeric-owner -C "$root" -cf - . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "stand-in for python:3.11-slim (debootstrap bookworm + python3)" \
    - "$image" >/dev/null
podman run --rm "$image" python -c 'import sys, venv, pip; print("stand-in python", sys.version.split()[0])'
