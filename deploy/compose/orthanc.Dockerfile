# Debian's Orthanc on the OncoPlan Debian base: the PACS to try the compose stack with (a site uses its
# own). Orthanc is GPL-3.0: this image is for trying and testing the stack, never part of what we ship.
# The build installs from Debian's mirror: podman build --network host -f orthanc.Dockerfile .
ARG BASE=oncoplan-base:bookworm
FROM ${BASE}
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends orthanc \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/orthanc/db && chown -R orthanc:orthanc /var/lib/orthanc
USER orthanc
EXPOSE 4242 8042
ENTRYPOINT ["Orthanc"]
CMD ["/etc/orthanc/orthanc.json"]
