# claude-bottle agent image. Rendered by claude_bottle/backend/docker/images.py; a copy is kept in
# the bottle's state dir as its current build recipe. Nothing a manifest says reaches a shell here:
# its package lists are files in the build context, read as data by bottle-install.
FROM ${base_image}
ARG DEBIAN_FRONTEND=noninteractive
${ca_copy}
COPY bottle-install /usr/local/sbin/bottle-install
COPY packages/apt.txt /tmp/bottle-packages/apt.txt
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends ca-certificates curl git python3 nodejs npm iptables tmux${pip_apt} \
 && bottle-install apt /tmp/bottle-packages/apt.txt \
 && ${ca_update}rm -rf /var/lib/apt/lists/*
${ca_env}
COPY packages/npm.txt /tmp/bottle-packages/npm.txt
RUN npm install -g --no-fund --no-audit --loglevel=error @anthropic-ai/claude-code@${claude_code_version} \
 && bottle-install npm /tmp/bottle-packages/npm.txt \
 && npm cache clean --force
COPY packages/pip.txt /tmp/bottle-packages/pip.txt
RUN bottle-install pip /tmp/bottle-packages/pip.txt && rm -rf /tmp/bottle-packages
RUN ${user_setup}
COPY bottle-wait-guard /usr/local/bin/bottle-wait-guard
COPY bottle-firewall /usr/local/sbin/bottle-firewall
COPY bottle-run /usr/local/bin/bottle-run
COPY bottle-capability /usr/local/bin/bottle-capability
# tmux holds interactive sessions so `attach` can come back to them. Claude Code must look as it does
# outside a bottle: UTF-8 (glyphs, not underscores), 256 colours and true colour, focus events on; no
# status bar, no escape delay.
RUN printf '%s\n' 'set -g status off' 'set -sg escape-time 0' 'set -g history-limit 50000' \
      'set -g focus-events on' 'set -g default-terminal "tmux-256color"' \
      'set -as terminal-features ",*:RGB"' > /etc/tmux.conf
# Packages the operator granted this bottle when it asked for them (empty unless a grant rebuilt it): a last
# layer of their own, so a grant reuses everything above. Read as data by bottle-install, as above.
COPY packages/granted /tmp/bottle-granted
RUN if [ -s /tmp/bottle-granted/apt.txt ]; then apt-get update -qq; fi \
 && bottle-install apt /tmp/bottle-granted/apt.txt \
 && bottle-install npm /tmp/bottle-granted/npm.txt \
 && bottle-install pip /tmp/bottle-granted/pip.txt \
 && rm -rf /tmp/bottle-granted /var/lib/apt/lists/*
ENV LANG=C.UTF-8 \
    LC_ALL=C.UTF-8 \
    DISABLE_AUTOUPDATER=1 \
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 \
    DISABLE_TELEMETRY=1 \
    DISABLE_ERROR_REPORTING=1 \
    IS_SANDBOX=1
USER ${uid}:${gid}
WORKDIR /workspace
ENTRYPOINT ["/usr/local/bin/bottle-wait-guard", "--exec"]
CMD ["sleep", "infinity"]
