#!/usr/bin/env bash
# Provision the course's Vagrant VM: the very same setup as `make setup`, then
# JupyterLab as a service on boot, reachable from the host at 127.0.0.1:8888.
# REPO and UNIT_DIR are for CI, which runs this script on its own Debian machine.
set -euo pipefail
repo=${REPO:-/vagrant}
unit_dir=${UNIT_DIR:-/etc/systemd/system}
cd "$repo"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq make git >/dev/null
bash scripts/setup.sh
# Ubuntu 24.04's AppArmor forbids unprivileged user namespaces, which the rootless
# lesson (`minicontainer run --rootless` as the vagrant user) needs. This is a lab VM:
# lift it here, persistently. Hosts without the switch (CI's Debian) are left alone.
restrict=/proc/sys/kernel/apparmor_restrict_unprivileged_userns
if [ -w "$restrict" ]; then
  echo "kernel.apparmor_restrict_unprivileged_userns = 0" |
    install -m 0644 /dev/stdin "${SYSCTL_DIR:-/etc/sysctl.d}/60-minicontainer-rootless.conf"
  echo 0 > "$restrict"
fi
token=${MINICONTAINER_TOKEN:-minicontainer}
install -m 0644 /dev/stdin "$unit_dir/minicontainer-lab.service" <<UNIT
[Unit]
Description=minicontainer course (JupyterLab)
After=network-online.target

[Service]
WorkingDirectory=$repo
ExecStart=$repo/.venv/bin/jupyter lab --allow-root --no-browser --ip=0.0.0.0 --port=8888 \
  --IdentityProvider.token=${token} --notebook-dir=$repo/notebooks
Restart=on-failure

[Install]
WantedBy=multi-user.target
UNIT
if [ -d /run/systemd/system ]; then          # systemd runs this machine
  systemctl daemon-reload
  systemctl enable --now minicontainer-lab.service
else
  echo "no systemd here: start the lab with \`make lab\`"
fi
.venv/bin/python -m minicontainer doctor || true
echo
echo "The lab is ready: open http://127.0.0.1:8888/lab?token=${token}"
