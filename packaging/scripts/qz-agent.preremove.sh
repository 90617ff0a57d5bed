#!/bin/sh
# Before the files are removed (deb prerm, rpm %preun). On a removal, not on
# an upgrade, the service stops and the links that enabled it go, so none
# are left pointing at a unit file that no longer exists.
set -e

unit=qz-agent.service

case "$1" in
remove | 0) # deb: remove; rpm: 0, no version left afterwards
	if [ -d /run/systemd/system ]; then
		systemctl stop "$unit" || true
	fi
	if command -v systemctl >/dev/null 2>&1; then
		systemctl --no-reload disable "$unit" >/dev/null 2>&1 || true
	fi
	;;
esac
exit 0
