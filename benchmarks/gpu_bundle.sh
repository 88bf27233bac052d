#!/usr/bin/env bash
# What benchmarks/gpu_check.sh needs on a GPU machine that reaches no registry, prepared here:
#   .whl/      wheels of the runtime dependencies that machine lacks (its own torch, numpy,
#              scipy, matplotlib, pillow, tqdm, PyYAML, packaging, MarkupSafe, pygments and
#              typing-extensions stay), pytest for the tests: all pure Python (py3-none-any),
#              so one set serves its Python 3.12 and a 3.11 here alike
#   .gpu-data/ the four canonical MNIST IDX files, gzipped (55 MB -> 11 MB; data.py reads
#              .gz from an IDX folder and checks every byte against the canonical md5), and
#              SOURCE: the commit they were bundled at (that machine gets no .git)
# Both are git-ignored; the device call carries them: carry [".whl", ".gpu-data"].
# Usage, from anywhere in the checkout: bash benchmarks/gpu_bundle.sh
# Env: PYTHON (a Python with this package's dependencies, for `ladder data` and the check;
# default .venv/bin/python, else python3), GPU_PYTHON_VERSION (default 3.12, the device's).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
PYVER=${GPU_PYTHON_VERSION:-3.12}
# The versions this project is tested with. optuna (and SQLAlchemy, alembic, Mako, colorlog
# under it) is imported by the command line at start-up; torchinfo by `ladder summary` and
# every `ladder run`. scipy and matplotlib are needed too (comparison.py, report.py import
# them at start-up), but the device image has both: nothing big travels.
WHEELS=(
  torchinfo==1.8.0
  optuna==5.0.0 alembic==1.20.1 SQLAlchemy==2.1.9 Mako==1.4.3 colorlog==6.12.0
  pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1
)

echo "== wheels for Python $PYVER -> .whl/"
rm -rf .whl
mkdir -p .whl
# --platform any: pure-Python wheels only (SQLAlchemy's compiled speed-ups are optional), so
# the set does not depend on the device's Python or C library, and the dry run here (any
# Python 3.11+) installs exactly what the device will.
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
  --implementation cp --platform any -d .whl "${WHEELS[@]}" 2>&1 | { grep -v "is ignored: it is neither" || true; }
got=(.whl/*-none-any.whl)
printf '%s\n' "${got[@]#.whl/}"
[ "${#got[@]}" -eq "${#WHEELS[@]}" ] || { echo "expected ${#WHEELS[@]} pure-Python wheels in .whl" >&2; exit 1; }

echo "== MNIST -> .gpu-data/"
cache=$("$PY" - <<'EOF'
import sys
sys.path.insert(0, "src")
from mnist_ladder.engine import data
print(data.default_cache_dir())
EOF
)
names=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)
for n in "${names[@]}"; do
  if [ ! -f "$cache/$n" ]; then  # fetch and verify once, into the usual cache
    PYTHONPATH=src "$PY" -m mnist_ladder data
    break
  fi
done
mkdir -p .gpu-data
for n in "${names[@]}"; do
  gzip -6 -c "$cache/$n" >".gpu-data/.$n.gz.tmp"
  mv ".gpu-data/.$n.gz.tmp" ".gpu-data/$n.gz"
done
# The exact path the device takes: the gzipped folder read and every file checked (md5).
PYTHONPATH=src "$PY" - <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, "src")
from mnist_ladder.engine import data
files = data.from_folder(Path(".gpu-data"))
for name, blob in files.items():
    data.verify(name, blob)
print(f"verified: {len(files)} files, {sum(map(len, files.values())):,} bytes uncompressed")
EOF
{
  echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "dirty $(git status --porcelain -- src tests benchmarks 2>/dev/null | grep -c . || true)"
  echo "bundled $(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >.gpu-data/SOURCE

echo "== sizes (what the device call sends: the working tree and the carried folders)"
du -sh .whl .gpu-data
tree_kib=$( (git ls-files -co --exclude-standard -z | du -ck --files0-from=- 2>/dev/null || true) \
  | tail -1 | cut -f1)
carry_kib=$(du -sk .whl .gpu-data | awk '{s += $1} END {print s}')
total_mib=$(( (tree_kib + carry_kib + 1023) / 1024 ))
echo "working tree $(( tree_kib / 1024 )) MiB + carried $(( carry_kib / 1024 )) MiB = ${total_mib} MiB (limit 64 MiB)"
if [ "$total_mib" -gt 56 ]; then
  echo "too close to the 64 MiB limit: leave something out" >&2
  exit 1
fi
