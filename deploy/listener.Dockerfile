# The DICOM listener alone (no models: it runs the apps as MAP containers or Kubernetes Jobs).
# docker build -f deploy/listener.Dockerfile -t oncoplan-listener .
FROM python:3.11-slim
# docker.io: the CLI for MAP containers (compose); kubernetes-client: kubectl for Jobs (Kubernetes).
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends docker.io kubernetes-client curl \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/oncoplan
COPY pyproject.toml constraints.txt README.md ./
COPY oncoplan oncoplan
COPY training training
COPY apps apps
COPY operators operators
COPY deploy deploy
# Only what the listener imports; the apps' dependencies live in their MAP images.
RUN pip install --no-cache-dir -c constraints.txt pydicom pynetdicom pyyaml \
    && pip install --no-cache-dir --no-deps .
EXPOSE 11112 8080
ENTRYPOINT ["oncoplan", "listen"]
CMD ["--config", "/etc/oncoplan/listener.yaml"]
