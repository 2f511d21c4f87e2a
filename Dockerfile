# The login pipeline's Python commands: the consumer (default), the generator, topic creation
# and the dashboard, as the `loginpipe` command and as the top-level scripts.
#
#   docker build -t loginpipe .
#   docker run --rm loginpipe loginpipe generate --help
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Every pinned dependency ships manylinux wheels for x86_64 and aarch64 (python-snappy 0.7
# uses cramjam's wheels), so no compiler is needed. Installed before the code is copied, so
# code changes do not reinstall them; the lock pins their own dependencies too.
COPY requirements.txt requirements-dashboard.txt requirements.lock ./
RUN pip install --constraint requirements.lock -r requirements.txt -r requirements-dashboard.txt

# An unprivileged user; the code stays root-owned and read-only to it.
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin app

COPY pyproject.toml README.md ./
COPY loginpipe/ loginpipe/
COPY *.py ./
# The package itself, for the `loginpipe` command; its dependencies are installed above.
RUN pip install --no-deps . && rm -rf build loginpipe.egg-info

USER app

CMD ["python", "create_kafka_consumer.py"]
