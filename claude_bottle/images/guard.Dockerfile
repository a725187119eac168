# claude-bottle egress guard image: python3 and the standard-library guard, nothing else.
# Its build copies files only, so it needs no network.
FROM ${guard_base_image}
COPY claude_bottle /opt/guard/claude_bottle
ENV PYTHONPATH=/opt/guard PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001:10001
ENTRYPOINT ["python3", "-m", "claude_bottle.egress"]
