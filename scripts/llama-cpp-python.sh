#!/usr/bin/env bash
# Installs llama-cpp-python's OpenAI-compatible server (it compiles
# llama.cpp from the source package: ~20 minutes on 2 cores) into a virtual
# environment outside the repository, and prints that environment's python.
# Skips the install when it is already there.
#
#   scripts/llama-cpp-python.sh                 # install if needed, print the python
#   "$(scripts/llama-cpp-python.sh)" -m llama_cpp.server --model FILE \
#       --logits_all true --host 127.0.0.1 --port 8001
#
# Settings (environment):
#   SLMBENCH_HOME         cache root (default: ~/.cache/slmbench)
#   LLAMA_CPP_PY_VERSION  the package's version (default: 0.3.36)
# Needs python3 with venv and pip, a C/C++ compiler and cmake (pip fetches
# cmake into the build environment when it is missing).
set -euo pipefail
version=${LLAMA_CPP_PY_VERSION:-0.3.36}
home=${SLMBENCH_HOME:-$HOME/.cache/slmbench}
venv="$home/llama-cpp-python/$version/venv"
py="$venv/bin/python"
if [ -x "$py" ] && "$py" -c "import llama_cpp.server" 2>/dev/null; then
  echo "$py"; exit 0
fi
python3 -m venv "$venv" >&2
# These CPUs report AMX in cpuid but the toolchain's -march=native enabling
# it breaks the build; the flags keep every other native feature.
flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
CMAKE_ARGS="-DGGML_NATIVE=ON -DCMAKE_C_FLAGS='$flags' -DCMAKE_CXX_FLAGS='$flags'" \
  "$py" -m pip install -q --no-binary llama-cpp-python \
  "llama-cpp-python[server]==$version" >&2
echo "$py"
