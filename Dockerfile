# The login pipeline's Python commands: the consumer (default), the generator, topic creation
# and the dashboard.
#
#   docker build -t loginpipe .
#   docker run --rm loginpipe python -m loginpipe.local.generator --help
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Every pinned dependency ships manylinux wheels for x86_64 and aarch64 (python-snappy 0.7
# uses cramjam's wheels), so no compiler is needed. Installed before the code is copied, so
# code changes do not reinstall them.
COPY requirements.txt requirements-dashboard.txt ./
RUN pip install -r requirements.txt -r requirements-dashboard.txt

# An unprivileged user; the code stays root-owned and read-only to it.
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin app

COPY loginpipe/ loginpipe/
COPY *.py ./

USER app

CMD ["python", "create_kafka_consumer.py"]
