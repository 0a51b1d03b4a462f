# tidemark container image. Build: docker build -t tidemark .
# Run:   docker run -v /etc/tidemark:/etc/tidemark:ro -p 9187:9187 tidemark
# Details: docs/operations.md, section "Packaging: container image".

# ---- build ----------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /build

# Dependencies first, against stub sources, so that this layer is reused while
# only tidemark's own code changes.
COPY Cargo.toml Cargo.lock ./
COPY core/Cargo.toml core/
COPY connectors/postgres/source/Cargo.toml connectors/postgres/source/
COPY connectors/postgres/sink/Cargo.toml connectors/postgres/sink/
COPY connectors/mysql/source/Cargo.toml connectors/mysql/source/
COPY connectors/mysql/sink/Cargo.toml connectors/mysql/sink/
RUN mkdir -p src tests core/src \
        connectors/postgres/source/src connectors/postgres/sink/src \
        connectors/mysql/source/src connectors/mysql/sink/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch tests/main.rs core/src/lib.rs \
        connectors/postgres/source/src/lib.rs connectors/postgres/sink/src/lib.rs \
        connectors/mysql/source/src/lib.rs connectors/mysql/sink/src/lib.rs \
    && cargo build --release --locked --bin tidemark

# The real sources. COPY keeps the files' old modification times, which can be
# older than the stub build: touch them so cargo rebuilds tidemark's crates, and
# check that the result is the real CLI, not the stub.
COPY . .
RUN find src core/src connectors -name '*.rs' -exec touch {} + \
    && cargo build --release --locked --bin tidemark \
    && ./target/release/tidemark --help | grep -q "run"

# ---- runtime --------------------------------------------------------------
FROM debian:bookworm-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 tidemark \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin tidemark \
    && mkdir -p /etc/tidemark

COPY --from=builder /build/target/release/tidemark /usr/local/bin/tidemark

# The CLI reads TIDEMARK_CONFIG as the default of -c. The metrics endpoint must
# listen on 0.0.0.0 inside a container; this override wins over the file.
ENV TIDEMARK_CONFIG=/etc/tidemark/pipelines.toml \
    TIDEMARK_METRICS__LISTEN=0.0.0.0:9187

USER 10001:10001
EXPOSE 9187

# The slim image has no curl: ask /healthz through bash's /dev/tcp.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9187 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q '200 OK' <&3"]

ENTRYPOINT ["tidemark"]
CMD ["run"]
