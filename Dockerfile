# The Bytewax flow (flows.live) as a container; see docker-compose.yml for the stack around it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY . .
RUN pip install . \
    && useradd --system --create-home app \
    && mkdir -p /data/recovery \
    && chown app /data/recovery
USER app

# Settings come from CDP_* variables. With CDP_RECOVERY_DIR set, `cdp-triggers run` creates
# the Bytewax recovery partitions on first start and a restarted container resumes from the
# last snapshot (every CDP_EPOCH_SECONDS). Scale out: more workers (-w) or more containers
# with -i/-a (see README "Scaling").
CMD ["cdp-triggers", "run", "-w", "2"]
