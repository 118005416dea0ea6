# The DICOM listener with both apps (warm app routes: deploy/compose/listener.yaml), on the OncoPlan
# runtime. Built offline by `oncoplan package listener --out DIR` (this file becomes DIR/Dockerfile).
ARG RUNTIME=oncoplan-runtime:latest
FROM ${RUNTIME}
LABEL org.opencontainers.image.title="OncoPlan DICOM listener (research use only)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN --mount=type=bind,source=dist,target=/dist pip install --no-index --no-deps /dist/oncoplan-*.whl
RUN mkdir -p /etc/oncoplan /var/lib/oncoplan/spool && chown -R 1000:1000 /var/lib/oncoplan
USER 1000:1000
WORKDIR /var/lib/oncoplan
EXPOSE 11112 8080
ENTRYPOINT ["oncoplan", "listen"]
CMD ["--config", "/etc/oncoplan/listener.yaml"]
