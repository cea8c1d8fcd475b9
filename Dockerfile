# conveyor in a container: the same binary as `cargo build --release`,
# run as an unprivileged user. Build: docker build -t conveyor .
# Configuration: mount your own at /etc/conveyor/conveyor.toml (a
# Kubernetes ConfigMap, see docs/kubernetes.md); the shipped example is
# there by default. REDIS_URL, REDIS_PASSWORD and CONVEYOR_WEB_TOKEN come
# from the environment.

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked && cp target/release/conveyor /conveyor

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 conveyor \
    && useradd --system --uid 10001 --gid conveyor --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin conveyor
COPY --from=build /conveyor /usr/local/bin/conveyor
COPY config/conveyor.toml /etc/conveyor/conveyor.toml
COPY config/templates /etc/conveyor/templates
# The example's file transport writes mail beside the configuration, which
# the conveyor user cannot write: a directory of its own, as the package's.
RUN sed -i 's|^dir = "outbox"$|dir = "/var/lib/conveyor/outbox"|' /etc/conveyor/conveyor.toml \
    && grep -q '^dir = "/var/lib/conveyor/outbox"$' /etc/conveyor/conveyor.toml \
    && install -d -o 10001 -g 10001 /var/lib/conveyor /var/lib/conveyor/outbox
# The dashboard, /metrics, /healthz, /readyz and the API on every address:
# a probe or a scraper reaches the pod's address, not its loopback. Beyond
# loopback conveyor refuses to start without CONVEYOR_WEB_TOKEN (16
# characters or more); CONVEYOR_WEB_LISTEN="" serves no web at all.
ENV CONVEYOR_WEB_LISTEN=0.0.0.0:9740
EXPOSE 9740
# The conveyor user, by number: Kubernetes' runAsNonRoot can check it.
USER 10001:10001
ENTRYPOINT ["conveyor", "run"]
