# syntax=docker/dockerfile:1
# archiver-operator: one static-ish binary (glibc) on a distroless base, run
# as the numeric non-root user 65532 (Kubernetes can only verify
# runAsNonRoot for a numeric user). The same image runs the operator
# (`run`) and the shard workers (`worker --shard NS/NAME`). Built without
# default features: no `demo` command, no throw-away servers, no test support.
#
#   docker build --build-arg ARCHIVER_GIT_COMMIT="$(git rev-parse HEAD)" \
#       -t archiver-operator:0.1.0 .
#
# The context has no .git (.dockerignore): without the build argument
# /health reports the commit as "unknown".

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Everything the release binary is built from: build.rs records the commit
# and build time /health reports, Cargo.toml also declares the benches and
# examples, and sqlx embeds migrations/ at compile time. tests/dockerfile.rs
# checks this list against cargo's own list of the package's targets.
ARG ARCHIVER_GIT_COMMIT=""
ARG SOURCE_DATE_EPOCH
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY migrations ./migrations
COPY benches ./benches
COPY examples ./examples
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --no-default-features --bin archiver-operator \
    && install -D -m 0755 target/release/archiver-operator /out/archiver-operator

# glibc, libgcc and CA certificates; no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/archiver-operator /usr/local/bin/archiver-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/archiver-operator"]
CMD ["run"]
