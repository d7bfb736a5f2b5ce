# The podvault image: one binary for the controller, the node agent, the webhook and the
# restore helper (`podvault restore-wait`).
#   docker build -t ghcr.io/podvault/podvault:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin podvault

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/podvault /usr/local/bin/podvault
USER 65532:65532
ENTRYPOINT ["podvault"]
