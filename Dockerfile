# The billing-recon application image: the CLI (`billing-recon`), the worker, the webhook
# receiver and the Stripe emulator are all this one image with different commands.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# The whole project (see .dockerignore): packages added later (webhooks/) come along.
COPY . .
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /app billing \
    && mkdir -p /data && chown billing /data

USER billing
# Prometheus metrics of the worker and the receiver (METRICS_BIND_ADDRESS), receiver HTTP.
EXPOSE 9464 8088
ENTRYPOINT ["billing-recon"]
CMD ["--help"]
