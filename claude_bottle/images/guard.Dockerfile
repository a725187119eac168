# claude-bottle egress guard image: python3 and the standard-library guard, nothing else.
# Its build copies files and compiles them (no network), so the guard starts without compiling anything.
FROM ${guard_base_image}
COPY claude_bottle /opt/guard/claude_bottle
RUN python3 -m compileall -q /opt/guard/claude_bottle
ENV PYTHONPATH=/opt/guard PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001:10001
ENTRYPOINT ["python3", "-m", "claude_bottle.guard"]
