# claude-bottle agent image. Rendered by claude_bottle/backend/docker/images.py; a copy is kept in
# the bottle's state dir as its current build recipe.
FROM ${base_image}
ARG DEBIAN_FRONTEND=noninteractive
${ca_copy}
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends ca-certificates curl git python3 nodejs npm iptables tmux ${apt_packages} \
 && ${ca_update}rm -rf /var/lib/apt/lists/*
${ca_env}
RUN npm install -g --no-fund --no-audit --loglevel=error @anthropic-ai/claude-code@${claude_code_version} ${npm_packages} \
 && npm cache clean --force
${pip_run}
RUN (getent group ${gid} >/dev/null || groupadd -g ${gid} claude) \
 && useradd -m -u ${uid} -g ${gid} -s /bin/bash claude \
 && mkdir -p /workspace /home/claude/.claude && chown ${uid}:${gid} /workspace /home/claude/.claude
COPY bottle-wait-guard /usr/local/bin/bottle-wait-guard
COPY bottle-firewall /usr/local/sbin/bottle-firewall
COPY bottle-run /usr/local/bin/bottle-run
# tmux holds interactive sessions so `attach` can come back to them: no status bar, no escape delay.
RUN printf 'set -g status off\nset -sg escape-time 0\nset -g history-limit 50000\n' > /etc/tmux.conf
ENV DISABLE_AUTOUPDATER=1 \
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 \
    DISABLE_TELEMETRY=1 \
    DISABLE_ERROR_REPORTING=1 \
    IS_SANDBOX=1
USER ${uid}:${gid}
WORKDIR /workspace
ENTRYPOINT ["/usr/local/bin/bottle-wait-guard", "--exec"]
CMD ["sleep", "infinity"]
