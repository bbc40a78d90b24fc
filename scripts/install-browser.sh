#!/usr/bin/env bash
# Install Debian's chromium, chromium-driver and nginx for the page tests (tests/pages).
#
# The tests drive chromium headless through Selenium with the driver named explicitly, so
# Selenium never tries to download a browser or driver of its own; nginx is the reverse proxy
# that serves clipserve under a path prefix, as an ingress would. The tests start their own
# nginx with a temporary config, so the distribution's service must not keep running (on these
# machines /usr/sbin/policy-rc.d already denies service starts). Idempotent: skips apt when
# every binary exists. The last stdout line is the absolute path of chromedriver.
set -euo pipefail

browser=/usr/bin/chromium
driver=/usr/bin/chromedriver
proxy=/usr/sbin/nginx

if [[ ! -x "$browser" || ! -x "$driver" || ! -x "$proxy" ]]; then
  sudo=""
  [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
  echo "install-browser: apt-get install chromium chromium-driver nginx" >&2
  $sudo apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends \
    chromium chromium-driver fonts-dejavu-core nginx >&2
  if [[ -x /etc/init.d/nginx ]] && $sudo /etc/init.d/nginx status >/dev/null 2>&1; then
    echo "install-browser: stopping the distribution's nginx service" >&2
    $sudo /etc/init.d/nginx stop >&2 || true
  fi
fi

"$browser" --version 2>/dev/null | head -1 >&2
"$proxy" -v
echo "$driver"
