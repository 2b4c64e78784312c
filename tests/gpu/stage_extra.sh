#!/usr/bin/env bash
# After `bash ../shared/gpu/stage.sh`: adds the Debian packages that the tokenizers need and the
# GPU machine lacks (PCRE2, ICU, SentencePiece and its protobuf-lite) to .gpu-deps/, where
# device-build.sh unpacks every .deb it finds. Run on the development machine, from the root.
set -euo pipefail
cd .gpu-deps
apt-get download libpcre2-8-0 libpcre2-dev libicu72 libicu-dev icu-devtools \
  libsentencepiece0 libsentencepiece-dev libprotobuf-lite32 2>&1 | grep -v "^W: Download is performed unsandboxed"
ls *.deb | wc -l
