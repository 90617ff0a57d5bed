#!/bin/sh
# After the files are in place (deb postinst, rpm %post). This never enables
# or starts qz-central: it is started by the administrator once
# /etc/qianzhi/central.yaml is filled in (systemctl enable --now qz-central).
# On an upgrade, a service that is running restarts on the new binary and
# one that is stopped stays stopped.
set -e

unit=qz-central.service

# deb: configure, with the version configured before in $2 ("" on a first
# install); rpm: how many versions are installed once this completes, 1 on
# a first install and 2 on an upgrade.
upgrade=
case "$1" in
configure)
	if [ -n "$2" ]; then upgrade=1; fi
	;;
[0-9]*)
	if [ "$1" -ge 2 ]; then upgrade=1; fi
	;;
esac

# The state folder, owned by the service user, exists from the install on:
# what runs as that user before the first start writes there (sudo -u
# qianzhi qz-central init), and StateDirectory= would make it only at the first
# start. One that exists is left as it is; no script removes it.
if [ ! -e /var/lib/qianzhi/central ]; then
	if [ ! -d /var/lib/qianzhi ]; then install -d -m 0755 /var/lib/qianzhi; fi
	install -d -o qianzhi -g qianzhi -m 0750 /var/lib/qianzhi/central
fi

# Only when systemd runs this machine (not in a chroot or a container build).
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
	if [ -n "$upgrade" ]; then
		systemctl try-restart "$unit" ||
			echo "qz-central: the restart on the new version failed; see: systemctl status qz-central" >&2
	fi
fi
exit 0
