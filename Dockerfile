# relay container image: a static binary on distroless (no shell, non-root).
#   docker build -t ghcr.io/relay1c/relay:0.1.0 .
#   docker run --rm -v "$PWD/routing.yaml:/etc/relay/routing.yaml:ro" -p 8088:8088 ghcr.io/relay1c/relay:0.1.0
# (routing.yaml must set relay.listen: 0.0.0.0:8088 and a relay.data_dir that
# is writable, e.g. a volume at /var/lib/relay.) Kubernetes: deploy/k8s/.

FROM golang:1.26-bookworm AS build
WORKDIR /src
# Modules first: this layer is rebuilt only when go.mod or go.sum change.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /relay ./cmd/relay

FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="relay" \
      org.opencontainers.image.description="Moves 1C:Enterprise exchange messages between offices over NATS JetStream" \
      org.opencontainers.image.source="https://github.com/relay1c/relay"
COPY --from=build /relay /usr/local/bin/relay
USER 65532:65532
# HTTP API, dashboard, /metrics, /healthz, /readyz (relay.listen).
EXPOSE 8088
ENTRYPOINT ["/usr/local/bin/relay"]
CMD ["run", "-c", "/etc/relay/routing.yaml"]
