# A stand-in for prom/prometheus where no image can be pulled (the compose test): the local
# base image plus a Prometheus binary from the build context (Debian's, statically linked
# but for libc). Same entrypoint, paths and user (nobody, 65534) as the upstream image, so the compose
# file's command and mounts fit both.
#
#   cp /usr/bin/prometheus CONTEXT/ && docker build -f deploy/image/prometheus.Dockerfile CONTEXT

ARG BASE_IMAGE=diptych-base:bookworm
FROM ${BASE_IMAGE}
COPY prometheus /bin/prometheus
RUN install -d -o nobody -g nogroup /prometheus /etc/prometheus
USER 65534:65534
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
