#!/usr/bin/env bash
# Builds llama.cpp's llama-server from the llama-cpp-python source package
# (its vendor/llama.cpp), outside the repository, and prints the binary's
# path. Skips the build when the binary is already there.
#
#   scripts/llama-server.sh            # build if needed, print the path
#
# Settings (environment):
#   SLMBENCH_HOME         cache root (default: ~/.cache/slmbench)
#   LLAMA_CPP_PY_VERSION  the source package's version (default: 0.3.36)
#   JOBS                  parallel compile jobs (default: the core count)
# Needs python3 with pip, a C/C++ compiler and cmake (pip installs cmake
# into the user site when it is missing).
set -euo pipefail
version=${LLAMA_CPP_PY_VERSION:-0.3.36}
home=${SLMBENCH_HOME:-$HOME/.cache/slmbench}
root="$home/llama-server/$version"
bin="$root/build/bin/llama-server"
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
mkdir -p "$root"
cd "$root"
if [ ! -d src ]; then
  python3 -m pip download -q --no-deps --no-binary llama-cpp-python \
    "llama-cpp-python==$version" -d dl >&2
  mkdir -p src
  tar -xzf dl/llama_cpp_python-"$version".tar.gz -C src --strip-components=1
fi
if ! command -v cmake >/dev/null 2>&1; then
  python3 -m pip install -q --user cmake >&2
  export PATH="$HOME/.local/bin:$PATH"
fi
# These CPUs report AMX in cpuid but the toolchain's -march=native enabling
# it breaks the build; the flags keep every other native feature.
flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
cmake -S src/vendor/llama.cpp -B build -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
  -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" >&2
cmake --build build --target llama-server -j "${JOBS:-$(nproc)}" >&2
echo "$bin"
