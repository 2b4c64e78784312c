#!/usr/bin/env bash
# After `bash ../shared/gpu/stage.sh`: adds the Debian packages that the tokenizers need and the
# GPU machine lacks (PCRE2, ICU, SentencePiece and its protobuf-lite) to .gpu-deps/, where
# device-build.sh unpacks every .deb it finds, and a static fio (the disk reference of the aio and
# NVMe benchmarks) built from Debian's fio 3.33 source as .gpu-deps/bin/fio: the GPU machine has
# no fio, and Debian's binary pulls in the Ceph and GlusterFS libraries. Run on the development
# machine, from the root.
set -euo pipefail
cd .gpu-deps
apt-get download libpcre2-8-0 libpcre2-dev libicu72 libicu-dev icu-devtools \
  libsentencepiece0 libsentencepiece-dev libprotobuf-lite32 2>&1 | { grep -v "^W: Download is performed unsandboxed" || true; }
ls *.deb | wc -l
# eu-stack (elfutils) for the fault checks' backtraces, kept apart from the build's packages:
# tests/gpu/gpu_shared.sh unpacks them on its own.
mkdir -p tools
(cd tools && apt-get download elfutils libdw1 libelf1 libasm1 libdebuginfod1 2>&1 |
   { grep -v "^W: Download is performed unsandboxed" || true; })

fio_sha256=d2410e13e0f379d061d077cc5ae325835bb7c6186aa7bafc1df954cbc9b014fc
if [[ ! -x bin/fio ]]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  curl -fsS -o "$work/fio.tar.gz" http://deb.debian.org/debian/pool/main/f/fio/fio_3.33.orig.tar.gz
  echo "$fio_sha256  $work/fio.tar.gz" | sha256sum -c --quiet
  tar xzf "$work/fio.tar.gz" -C "$work"
  (cd "$work/fio-3.33" &&
   ./configure --build-static --disable-native --disable-numa --disable-rdma --disable-rados \
     --disable-rbd --disable-http --disable-gfapi --disable-libnfs --disable-pmem --disable-xnvme \
     --disable-libzbc --disable-tcmalloc --disable-dfs --disable-lex > /dev/null &&
   make -j"$(nproc)" > /dev/null)
  mkdir -p bin && cp "$work/fio-3.33/fio" bin/fio
fi
bin/fio --version
