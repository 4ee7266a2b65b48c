FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY services ./services
COPY worker ./worker
COPY beat_schedule ./beat_schedule
RUN pip install --no-cache-dir '.[postgres,flower,web]'
# Beat's schedule file and the SQLite default live here.
RUN mkdir -p /app/var
CMD ["celery", "-A", "worker", "worker", "-l", "INFO"]
