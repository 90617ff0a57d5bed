#!/bin/sh
# Before the files are unpacked (deb preinst, rpm %pre), on install and on
# upgrade: the qianzhi system user and group exist, so the configs owned by
# group qianzhi unpack with that group. qz-agent and qz-central share them.
set -e

if ! getent passwd qianzhi >/dev/null; then
	# A group left behind (a user deleted by hand) would make --user-group fail.
	if getent group qianzhi >/dev/null; then
		group="--gid qianzhi"
	else
		group="--user-group"
	fi
	useradd --system $group --home-dir /var/lib/qianzhi --no-create-home \
		--shell /usr/sbin/nologin --comment "Qianzhi data exchange" qianzhi
fi
exit 0
