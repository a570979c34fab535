FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 APPDATA=/data
WORKDIR /srv
COPY requirements.txt .
RUN pip install --disable-pip-version-check -r requirements.txt
COPY app ./app
COPY worker.py .
RUN useradd --create-home service && mkdir -p /data && chown service /data
USER service
EXPOSE 8000
# Every gunicorn setting lives in app/gunicorn_conf.py and reads an environment variable.
ENV BIND=0.0.0.0:8000 WEB_CONCURRENCY=4
CMD ["gunicorn", "-c", "python:app.gunicorn_conf"]
