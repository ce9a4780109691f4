# relay container image: a static binary on distroless (no shell, non-root).
#   docker build -t ghcr.io/relay1c/relay:0.1.0 .
#   docker run --rm -v "$PWD/routing.yaml:/etc/relay/routing.yaml:ro" \
#     -v relay-data:/var/lib/relay -p 8088:8088 ghcr.io/relay1c/relay:0.1.0
# (routing.yaml must set relay.listen: 0.0.0.0:8088 and relay.data_dir:
# /var/lib/relay, the image's one writable directory, owned by the uid the
# process runs as; the named volume relay-data keeps it, and with the
# embedded NATS server its JetStream store, across containers.)
# Kubernetes: deploy/k8s/.

FROM golang:1.26-bookworm AS build
WORKDIR /src
# Modules first: this layer is rebuilt only when go.mod or go.sum change.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /relay ./cmd/relay
# relay.data_dir: distroless has no shell to mkdir in the final stage.
RUN mkdir -p /out/var/lib/relay

FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="relay" \
      org.opencontainers.image.description="Moves 1C:Enterprise exchange messages between offices over NATS JetStream" \
      org.opencontainers.image.source="https://github.com/relay1c/relay"
COPY --from=build /relay /usr/local/bin/relay
# Owned by the runtime uid, so a new named volume mounted here is writable too
# (Docker copies the directory's ownership into an empty volume).
COPY --from=build --chown=65532:65532 /out/var/lib/relay /var/lib/relay
USER 65532:65532
VOLUME /var/lib/relay
# HTTP API, dashboard, /metrics, /healthz, /readyz (relay.listen).
EXPOSE 8088
ENTRYPOINT ["/usr/local/bin/relay"]
CMD ["run", "-c", "/etc/relay/routing.yaml"]
