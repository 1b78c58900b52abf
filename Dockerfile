# Multi-stage image of the events processor: events-processor (default), dlq-worker, eventctl.
#
#   docker build -t events-processor:0.1.0 .
#   docker run --rm -e POSTGRES_DSN=... -e NATS_URL=... events-processor:0.1.0
#   docker run --rm -e POSTGRES_DSN=... events-processor:0.1.0 eventctl migrate
#
# Works with the classic builder and BuildKit alike (no heredocs, no cache mounts).

ARG DEBIAN_RELEASE=bookworm

# --- build -------------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE} AS build

# The -dev packages of scripts/bootstrap.sh (servers and clang-format are not needed here).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config ca-certificates \
      libnats-dev libpqxx-dev nlohmann-json3-dev prometheus-cpp-dev libspdlog-dev \
      libgtest-dev libgmock-dev libvalijson-dev libcpp-httplib-dev libcli11-dev libjemalloc-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# .dockerignore keeps build outputs, .git, .local and deployment files out of the context.
COPY . .
# A build directory copied from a developer's tree would carry a foreign CMake cache.
RUN rm -rf build \
 && cmake --preset release -DEVP_BUILD_TESTS=OFF \
 && cmake --build --preset release -j"$(nproc)" \
 && strip --strip-unneeded build/release/events-processor build/release/dlq-worker \
      build/release/eventctl

# --- runtime -----------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

# Runtime libraries only (sonames checked with objdump -p on the binaries):
# libnats.so.3.4, libpqxx-6.4.so (pulls libpq5), libprometheus-cpp-core.so.1.0,
# libspdlog.so.1.10, libfmt.so.9, libcpp-httplib.so.0.11, libjemalloc.so.2. curl serves the
# HEALTHCHECK.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libnats3.4 libpqxx-6.4 libprometheus-cpp-core1.0 libspdlog1.10 libfmt9 \
      libcpp-httplib0.11 libjemalloc2 ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 evp \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin evp

# Health check helper: HTTP_PORT when set, else the binary's default port (8081 for
# dlq-worker, 8080 otherwise), found from the running process names.
RUN printf '%s\n' \
      '#!/bin/sh' \
      '# Usage: evp-healthcheck [healthz|readyz]' \
      'port="${HTTP_PORT:-}"' \
      'if [ -z "$port" ]; then' \
      '  port=8080' \
      '  for f in /proc/[0-9]*/comm; do' \
      '    read -r name 2>/dev/null < "$f" || continue' \
      '    [ "$name" = dlq-worker ] && port=8081' \
      '  done' \
      'fi' \
      'exec curl -fsS -o /dev/null --max-time 3 "http://127.0.0.1:${port}/${1:-healthz}"' \
      > /usr/local/bin/evp-healthcheck \
 && chmod 0755 /usr/local/bin/evp-healthcheck

COPY --from=build /src/build/release/events-processor /src/build/release/dlq-worker \
     /src/build/release/eventctl /usr/local/bin/
# The binaries embed schemas and migrations; these copies are for operators and tooling.
COPY --from=build /src/schemas /usr/share/events-processor/schemas
COPY --from=build /src/migrations /usr/share/events-processor/migrations

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="events-processor" \
      org.opencontainers.image.description="Multi-tenant NATS JetStream events processor, DLQ worker and eventctl" \
      org.opencontainers.image.version="${VERSION}"

USER 10001:10001
WORKDIR /
EXPOSE 8080 8081
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["/usr/local/bin/evp-healthcheck", "healthz"]
CMD ["events-processor"]
