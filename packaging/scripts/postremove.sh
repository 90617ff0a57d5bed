#!/bin/sh
# After the files are removed (deb postrm, rpm %postun): systemd forgets the
# removed unit.
#
# Purging (dpkg --purge) deletes the packaged configs in /etc/qianzhi, as
# dpkg does for every conffile, but keeps on purpose the qianzhi user and
# group and /var/lib/qianzhi: the state holds the node's identity and keys,
# the hub's CA and database, and batches not yet delivered, and the other
# Qianzhi package may still run as that user. Deleting them is the
# administrator's decision: userdel qianzhi; rm -r /var/lib/qianzhi.
set -e

case "$1" in
remove | purge | 0) # deb: remove, purge; rpm: 0, no version left
	if [ -d /run/systemd/system ]; then
		systemctl daemon-reload || true
	fi
	;;
esac
exit 0
