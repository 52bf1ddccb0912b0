# llbgen's gateway frontend image: Python, llbgen and its dependencies, and the entrypoint
# `python -m llbgen.frontend`, which BuildKit runs for `# syntax=IMAGE` definition files and for
# `buildctl build --frontend gateway.v0 --opt source=IMAGE`.
#
# Build and push it (from the repository root, with BuildKit's built-in Dockerfile frontend):
#
#   buildctl build --frontend dockerfile.v0 --local context=. --local dockerfile=. \
#       --opt filename=frontend.Dockerfile \
#       [--opt build-arg:BASE=REGISTRY/debian:trixie@sha256:...] \
#       [--secret id=ca-certificates,src=/etc/ssl/certs/ca-certificates.crt] \
#       --output type=image,name=REGISTRY/llbgen/frontend:TAG,push=true
#
# BASE is any Debian trixie image (pinned by digest). The build installs python3 from Debian's
# mirror and the Python packages from PyPI, so its RUN steps need network access (the default
# for BuildKit's OCI worker without CNI, and for buildx). Where HTTPS goes through a proxy with a
# CA of its own, pass the host's CA bundle as the optional `ca-certificates` secret: pip trusts
# it for the build, and it is not kept in the image.
#
# Python packages are pinned: llbgen's own pins (pyproject.toml) and the constraints below.

ARG BASE=docker.io/library/debian:trixie-slim@sha256:a29215f6a35e51e22adffa17f89e9d2ef06214e64a2bad10d765c46aea49f11f

FROM ${BASE} AS python
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb

FROM python AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/llbgen
COPY <<EOF /src/constraints.txt
# What llbgen's pyproject.toml leaves open, pinned for this image.
attrs==26.1.0
rich==15.0.0
markdown-it-py==4.3.0
mdurl==0.1.2
pygments==2.21.0
hpack==4.2.0
hyperframe==6.1.0
typing-extensions==4.16.0
setuptools==80.9.0
EOF
COPY pyproject.toml /src/
# Dependencies and build tools first: this layer is reused until pyproject.toml changes.
RUN --mount=type=secret,id=ca-certificates,required=false <<EOF
set -eu
if [ -s /run/secrets/ca-certificates ]; then export PIP_CERT=/run/secrets/ca-certificates; fi
/opt/llbgen/bin/python - <<'PY' > /src/requirements.txt
import tomllib
with open("/src/pyproject.toml", "rb") as f:
    project = tomllib.load(f)
print("\n".join(project["project"]["dependencies"] + project["build-system"]["requires"]))
PY
/opt/llbgen/bin/pip install --no-cache-dir --disable-pip-version-check \
    -c /src/constraints.txt -r /src/requirements.txt
EOF
COPY setup.py README.md /src/
COPY protos /src/protos
COPY --exclude=**/__pycache__ --exclude=pb/*_pb2.py --exclude=pb/*_pb2.pyi --exclude=pb/*_pb2_grpc.py \
    llbgen /src/llbgen
# llbgen itself; its protobuf bindings are generated here, by the pinned grpcio-tools. Bytecode
# is compiled now: the frontend starts for every build, from a read-only image.
RUN /opt/llbgen/bin/pip install --no-cache-dir --disable-pip-version-check \
        --no-deps --no-build-isolation /src \
 && /opt/llbgen/bin/pip uninstall -y --disable-pip-version-check grpcio-tools setuptools \
 && /opt/llbgen/bin/python -m compileall -q /opt/llbgen \
 && /opt/llbgen/bin/python -c "import llbgen.frontend.frontend"

FROM python
COPY --from=build /opt/llbgen /opt/llbgen
ENV PYTHONDONTWRITEBYTECODE=1
LABEL moby.buildkit.frontend.network.none="true"
LABEL moby.buildkit.frontend.caps="moby.buildkit.frontend.inputs"
LABEL org.opencontainers.image.title="llbgen frontend"
ENTRYPOINT ["/opt/llbgen/bin/python", "-m", "llbgen.frontend"]
