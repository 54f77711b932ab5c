# The securestreams image, for a Docker that reaches a registry: built in a
# Debian container, run from a small Debian image with only the runtime
# libraries.
#   docker build -t securestreams:latest .        (or: make image-debian)
# Without a registry, `make image` builds an equivalent image FROM scratch from
# the binary and libraries on this machine (docker/build-scratch-image).
FROM debian:bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential pkg-config libzmq3-dev libsodium-dev libssl-dev liblua5.4-dev \
        libmsgpack-dev libseccomp-dev libcjson-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile ./
COPY lib/ lib/
COPY src/ src/
COPY tools/ tools/
RUN make -j"$(nproc)" BUILD=/out /out/securestreams

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libzmq5 libsodium23 libssl3 liblua5.4-0 libmsgpackc2 libseccomp2 libcjson1 \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /pipeline /data
COPY --from=build /out/securestreams /usr/local/bin/securestreams
WORKDIR /
ENTRYPOINT ["/usr/local/bin/securestreams"]
CMD ["--help"]
