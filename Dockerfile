# cntr as a container image, for those who build from a registry:
#     docker build -t cntr:latest .
# scripts/build-image makes the same image without one (a root filesystem made from
# Debian 12 packages with mmdebstrap, nothing pulled): keep the two package lists alike.
# Run it as README.md says ("cntr as a container image").
# BASE: another Debian 12 image with apt (e.g. one made locally: mmdebstrap --variant=minbase).
ARG BASE=debian:bookworm-slim
FROM ${BASE}
# containerd is there for ctr alone (the kubernetes engine reads pod labels through it);
# busybox-static for `cntr exec` in a --tools session.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        python3 python3-pyfuse3 python3-trio python3-msgpack python3-click fuse3 \
        strace gdb-minimal tcpdump iproute2 procps curl ca-certificates vim-tiny less \
        containerd busybox-static \
 && rm -f /usr/bin/containerd /usr/bin/containerd-shim* /usr/sbin/runc \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /usr/share/doc/* /usr/share/man/* \
        /usr/share/info/* /usr/share/locale/*
# The checkout's layout under /usr/lib/cntr (cntr/stages is a link to ../stages), as the
# .deb that scripts/build-image installs has it (with cntr/stages a directory).
COPY cntr /usr/lib/cntr/cntr
COPY stages /usr/lib/cntr/stages
COPY schemas /usr/lib/cntr/schemas
COPY packaging/debian/cntr /usr/bin/cntr
RUN mkdir -p /var/lib/cntr /host \
 && chmod 755 /usr/bin/cntr \
 && python3 -m compileall -q /usr/lib/cntr
ENTRYPOINT ["/usr/bin/cntr"]
