#!/usr/bin/env bash
# Install Debian's prometheus package for the dashboard test (tests/chart/test_dashboard.py).
#
# The test starts its own prometheus on a free loopback port with a temporary config, so the
# distribution's service must not keep running. On these machines /usr/sbin/policy-rc.d already
# denies service starts (and there is no systemd); if a package start slipped through anyway we
# stop it through its own init script. Idempotent: skips when /usr/bin/prometheus exists.
# The last stdout line is the absolute path of the binary.
set -euo pipefail

bin=/usr/bin/prometheus

if [[ ! -x "$bin" ]]; then
  sudo=""
  [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
  echo "install-prometheus: apt-get install prometheus" >&2
  $sudo apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends prometheus >&2
  # The package's postinst asks invoke-rc.d to start the daemon; make sure it is not running.
  if [[ -x /etc/init.d/prometheus ]] && $sudo /etc/init.d/prometheus status >/dev/null 2>&1; then
    echo "install-prometheus: stopping the distribution's prometheus service" >&2
    $sudo /etc/init.d/prometheus stop >&2 || true
  fi
fi

"$bin" --version 2>&1 | head -1 >&2
echo "$bin"
