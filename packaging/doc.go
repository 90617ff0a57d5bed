// Package packaging holds the .deb and .rpm definitions of qz-agent and
// qz-central (nfpm/, built by make package), their systemd units
// (systemd/), the configs they install in /etc/qianzhi (etc/) and their
// install scripts (scripts/). Its tests build the packages and read them
// back, check the units with systemd-analyze, and install the .deb and the
// .rpm into a throwaway Debian root (see testroot).
package packaging
