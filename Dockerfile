# headswap on GPUs: `docker build -t headswap .` then (host folders writable by uid 1000, see README)
#   docker run --gpus all -v "$PWD/data:/data" -v "$PWD/features_cache:/app/features_cache" \
#     -v "$PWD/runs:/app/runs" -v "$HOME/.keras:/home/headswap/.keras" headswap make extract DATA=/data
# The base image pins the same TensorFlow as pyproject.toml (2.21, Keras 3).
FROM tensorflow/tensorflow:2.21.0-gpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    TF_FORCE_GPU_ALLOW_GROWTH=true \
    KERAS_HOME=/home/headswap/.keras

RUN apt-get update \
    && apt-get install -y --no-install-recommends make python3-venv \
    && rm -rf /var/lib/apt/lists/*

# WORKDIR would create /app as root, and COPY --chown changes what it copies, not a destination that exists: the
# user would then be unable to create .venv in it. The volumes' mount points are made here too, so an anonymous
# volume (no -v for it) starts owned by the user instead of by root.
RUN useradd --create-home --uid 1000 headswap \
    && install -d -o headswap -g headswap /app /app/runs /home/headswap/.keras /home/headswap/.keras/models
WORKDIR /app
COPY --chown=headswap:headswap . /app
USER 1000

# Installed the same way as the README (`make setup`), without the dev extras (pytest, hadolint); the venv
# sees the base image's CUDA-enabled TensorFlow, so pip keeps it instead of downloading another.
RUN python3 -m venv --system-site-packages .venv \
    && make setup EXTRAS=

VOLUME ["/data", "/app/features_cache", "/app/runs", "/home/headswap/.keras"]
ENTRYPOINT []
CMD ["make", "help"]
