# The API image: the service only (FastAPI, catalogue, storage, queue client). No torch: the engine's ML
# stack is the `engine` extra and lives in Dockerfile.gpu. The same image runs `lethe migrate`.
# Docker Hub's official python image, its tag the pin (scripts/check_deploy.sh `images` says why no digest).

FROM docker.io/library/python:3.11.13-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# A venv in a fixed place, so the runtime stage copies exactly what pip installed and nothing of the build.
RUN python -m venv /opt/venv
WORKDIR /src
COPY . .
RUN /opt/venv/bin/pip install --no-cache-dir .


FROM docker.io/library/python:3.11.13-slim-bookworm

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LETHE_DATA_DIR=/var/lib/lethe

# A fixed uid/gid so a mounted volume's ownership is predictable on the host.
RUN groupadd --system --gid 10001 lethe \
    && useradd --system --uid 10001 --gid lethe --home-dir /var/lib/lethe --no-create-home \
       --shell /usr/sbin/nologin lethe \
    && install -d -o lethe -g lethe -m 0750 /var/lib/lethe \
    && install -d -o lethe -g lethe -m 0700 /var/lib/lethe-signing-keys

COPY --from=build /opt/venv /opt/venv

USER 10001:10001
WORKDIR /var/lib/lethe
EXPOSE 8000

# Python itself does the probe: no curl in the image. urlopen raises on any non-2xx answer, so exit code 1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

CMD ["lethe", "serve", "--host", "0.0.0.0", "--port", "8000"]
