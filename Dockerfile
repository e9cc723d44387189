# An example image: Baton built from this repository, with the shipped workflows. Baton itself
# needs nothing else at run time; see compose.yaml for it beside PostgreSQL.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin baton

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home-dir /var/lib/baton --create-home baton
COPY --from=build /src/target/release/baton /usr/local/bin/baton
COPY commands /etc/baton/commands
USER baton
WORKDIR /var/lib/baton
# Bound beyond loopback inside the container, so the console demands BATON_CONSOLE_TOKEN.
ENV BATON_HTTP_ADDR=0.0.0.0:8080 \
    BATON_COMMANDS_DIR=/etc/baton/commands \
    DATABASE_URL=sqlite:///var/lib/baton/baton.db
EXPOSE 8080
# Ready when its database answers and its platforms are connected.
HEALTHCHECK --interval=10s --timeout=3s CMD ["curl", "-fsS", "http://127.0.0.1:8080/readyz"]
ENTRYPOINT ["baton"]
