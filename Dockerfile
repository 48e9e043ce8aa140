# modelyard, CPU image: every backend (torch CPU build, ONNX Runtime, tensorflow-cpu), the
# demo built in, serving TF Serving's ports. docs/container.md says how it was tested.
#
#   docker build -t modelyard .
#   docker run --rm -p 8500:8500 -p 8501:8501 modelyard                     # the demo
#   docker run --rm -p 8500:8500 -p 8501:8501 -v "$PWD/models:/models" modelyard \
#       --model_config_file=/models/models.config                            # your models
#
# CUDA variant: --build-arg BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 (with Python
# 3.11+) and --build-arg TORCH_INDEX=https://pypi.org/simple (torch's default CUDA wheel);
# run with --gpus all. For SavedModels on the GPU add tensorflow[and-cuda].

ARG BASE=python:3.11-slim-bookworm

# -- build: the checkout and its dependencies installed into a venv that is copied as is --
FROM ${BASE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY src ./src
# torch first, from the CPU index: from PyPI, torch==2.13.0 is the CUDA build (GBs of nvidia-*).
RUN python3 -m venv /opt/modelyard \
 && /opt/modelyard/bin/pip install --quiet --index-url "${TORCH_INDEX}" torch==2.13.0 \
 && /opt/modelyard/bin/pip install --quiet -c constraints.txt ".[all]"

# -- runtime: the venv, a non-root user, the demo built once, /models ----------------------
FROM ${BASE}
COPY --from=build /opt/modelyard /opt/modelyard
RUN useradd --system --uid 1000 --create-home --home-dir /home/modelyard modelyard \
 && mkdir /models && chown modelyard /models
USER modelyard
ENV PATH=/opt/modelyard/bin:$PATH \
    MODELYARD_CACHE_DIR=/home/modelyard/.cache/modelyard
RUN python -c "from modelyard.demo import build_demo_repository as b; print(b())"
WORKDIR /models
EXPOSE 8500 8501
# Ready, not just live: true once the configured models are loaded.
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request as u; r = u.urlopen('http://127.0.0.1:8501/v2/health/ready', timeout=2); sys.exit(0 if r.status == 200 else 1)"]
# --host 0.0.0.0 in the container only: there the port mapping is the boundary. Outside a
# container modelyard listens on 127.0.0.1 unless told otherwise.
ENTRYPOINT ["modelyard", "serve", "--host", "0.0.0.0", "--port", "8500", "--rest_api_port", "8501"]
CMD []
