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
# The hot path compiled (cdp_triggers/compiled.py), then the compiler removed again; Cython's
# pin is read from pyproject.toml. Built from / so that it hashes the installed sources.
ENV CDP_COMPILED_DIR=/opt/cdp-compiled
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install "$(python -c "import tomllib; print(next(d for d in tomllib.load(open(\
'/app/pyproject.toml', 'rb'))['project']['optional-dependencies']['test'] \
if d.startswith('Cython')))")" \
    && cd / && cdp-triggers compile \
    && pip uninstall -y Cython \
    && apt-get purge -y gcc libc6-dev && apt-get autoremove -y && rm -rf /var/lib/apt/lists/*
USER app

# Settings come from CDP_* variables. With CDP_RECOVERY_DIR set, `cdp-triggers run` creates
# the Bytewax recovery partitions on first start and a restarted container resumes from the
# last snapshot (every CDP_EPOCH_SECONDS). Scale out: more workers (-w) or more containers
# with -i/-a (see README "Scaling").
CMD ["cdp-triggers", "run", "-w", "2"]
