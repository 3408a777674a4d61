# The examples (three scenarios, the service, and the README's drop-in snippet), for the
# `examples` profile of docker-compose.yml:
#
#   docker compose --profile examples up -d --build
#
# Each container runs one example with STALLSCOPE_KEEP_RUNNING=1: it repeats its hazard until
# stopped (the service example serves until stopped) and exports OTLP metrics (and a span per stall) to the collector. The build context is
# the repository (see .dockerignore); .cargo/config.toml builds with --cfg tokio_unstable.
FROM rust:1.95-slim-trixie AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --examples

FROM debian:trixie-slim
COPY --from=build /src/target/release/examples/blocking_in_async \
    /src/target/release/examples/blocking_pool_starvation \
    /src/target/release/examples/threads_with_runtimes \
    /src/target/release/examples/service \
    /src/target/release/examples/drop_in \
    /usr/local/bin/
ENV RUST_LOG=info \
    NO_COLOR=1 \
    STALLSCOPE_KEEP_RUNNING=1
USER 65534:65534
CMD ["blocking_in_async"]
